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
    for global in [global_names::CLAIM_MASK, global_names::RECORD_MASK] {
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
