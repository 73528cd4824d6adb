//! The embedded eBPF object, read without root: it holds every map, program and global that
//! user space names (one table of them, `udpguard_common::names`), and nothing of the
//! benchmark's (its baselines are an object of their own, so editing them never changes the
//! shipped object, whose hash is an attachment's identity).
use object::{Object as _, ObjectSymbol as _};
use udpguard::loader::OBJECT;
use udpguard_common::names::{MAP_PINS, global_names, program_names};

#[test]
fn the_object_holds_every_name_user_space_uses() {
    let obj = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
    for (map, _) in MAP_PINS {
        assert!(obj.maps.contains_key(map), "map {map} missing");
    }
    for program in program_names::ALL {
        assert!(
            obj.programs.contains_key(program),
            "program {program} missing"
        );
    }
    let elf = object::File::parse(OBJECT).unwrap();
    let symbols: Vec<&str> = elf.symbols().filter_map(|s| s.name().ok()).collect();
    for global in [
        global_names::CLAIM_MASK,
        global_names::RECORD_MASK,
        global_names::REUSE_WORD,
        global_names::REUSE_MASK,
    ] {
        assert!(symbols.contains(&global), "global {global} missing");
    }
}

#[test]
fn the_shipped_object_holds_no_benchmark_program() {
    let obj = aya_obj::Object::parse(OBJECT).unwrap();
    let names: Vec<&String> = obj.programs.keys().collect();
    assert!(
        names.iter().all(|n| n.starts_with("udpguard_")),
        "programs that are not udpguard's: {names:?}"
    );
    assert_eq!(names.len(), program_names::ALL.len(), "{names:?}");
}

/// The older-kernel build (`udpguard_conn4b`/`6b`, and the watch programs) must load on Linux
/// 5.10, whose verifier refuses the atomic fetch operations (`BPF_CMPXCHG`, `BPF_XCHG`, fetch
/// adds: Linux 5.12) even in code no path reaches. A plain atomic add (`lock +=`) is fine.
#[test]
fn the_older_kernel_programs_hold_no_atomic_fetch_operation() {
    use object::{ObjectSection as _, SymbolKind};
    let elf = object::File::parse(OBJECT).unwrap();
    let fetch_atomics = |name: &str| -> usize {
        let symbol = elf
            .symbols()
            .find(|s| s.name() == Ok(name) && s.kind() == SymbolKind::Text)
            .unwrap_or_else(|| panic!("no function {name} in the object"));
        let section = elf
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let data = section.data().unwrap();
        let start = (symbol.address() - section.address()) as usize;
        let code = &data[start..start + symbol.size() as usize];
        code.chunks_exact(8)
            .filter(|insn| {
                // BPF_STX | BPF_ATOMIC with a word or double word; imm 0 is the plain add.
                let atomic = insn[0] == 0xdb || insn[0] == 0xc3;
                atomic && i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) != 0
            })
            .count()
    };
    for name in [
        program_names::CONNECT4_BASIC,
        program_names::CONNECT6_BASIC,
        program_names::WATCH4,
        program_names::WATCH6,
    ] {
        assert_eq!(
            fetch_atomics(name),
            0,
            "{name} uses atomic fetch operations"
        );
    }
    // The check sees them where they are: the claims' builds are made of them.
    assert!(fetch_atomics(program_names::CONNECT4_PLAIN) > 0);
}
