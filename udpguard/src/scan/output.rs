//! The scan's findings, and how they are shown: a table for people, JSON for
//! scripts and probes.

use std::fmt::Write as _;

use serde::Serialize;

use super::procfs::Process;
use crate::sys::socket::Family;

/// Everything a scan found. Serialises to the documented JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Connected UDP sockets examined.
    pub scanned: usize,
    /// The 4-tuples shared by two or more sockets.
    pub duplicates: Vec<DuplicateReport>,
    /// Set when something could not be seen (processes or namespaces not
    /// readable without root); omitted when the answer is complete.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Number of namespaces scanned, with `--all-netns`; not in the JSON.
    #[serde(skip)]
    pub namespaces_scanned: Option<usize>,
}

/// One shared 4-tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateReport {
    /// The namespace, with `--all-netns` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Local address:port (`127.0.0.1:5000`, `[::1]:5001`).
    pub local: String,
    /// Remote address:port.
    pub remote: String,
    /// The sockets sharing it, ordered by inode.
    pub sockets: Vec<SocketReport>,
}

/// One socket of a shared 4-tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketReport {
    /// Socket inode.
    pub inode: u64,
    /// Owner uid.
    pub uid: u32,
    /// The socket's own family.
    pub family: Family,
    /// Whether the kernel delivers the peer's datagrams to it (the others starve).
    pub receiving: bool,
    /// The processes holding it.
    pub processes: Vec<Process>,
}

impl Report {
    /// Sockets that share a tuple but do not receive.
    pub fn starving(&self) -> usize {
        self.duplicates
            .iter()
            .flat_map(|d| &d.sockets)
            .filter(|s| !s.receiving)
            .count()
    }
}

/// The report as one JSON object on one line.
pub fn render_json(report: &Report) -> String {
    let mut json = serde_json::to_string(report).expect("the report always serialises");
    json.push('\n');
    json
}

/// The report as a table: one block per shared tuple, then a summary line.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    for duplicate in &report.duplicates {
        let receiving = duplicate.sockets.iter().filter(|s| s.receiving).count();
        let netns = match &duplicate.netns {
            Some(name) => format!("netns {name}: "),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{netns}{} -> {}: {} sockets, {} receiving, {} starving",
            duplicate.local,
            duplicate.remote,
            duplicate.sockets.len(),
            receiving,
            duplicate.sockets.len() - receiving,
        );
        let mut rows = vec![[
            "INODE".to_owned(),
            "UID".to_owned(),
            "FAMILY".to_owned(),
            "TRAFFIC".to_owned(),
            "PROCESSES".to_owned(),
        ]];
        rows.extend(duplicate.sockets.iter().map(|s| {
            [
                s.inode.to_string(),
                s.uid.to_string(),
                family_name(s.family).to_owned(),
                if s.receiving { "receiving" } else { "starving" }.to_owned(),
                process_list(&s.processes),
            ]
        }));
        write_aligned(&mut out, &rows);
        out.push('\n');
    }

    let sockets = counted(
        report.scanned,
        "connected UDP socket",
        "connected UDP sockets",
    );
    let namespaces = match report.namespaces_scanned {
        Some(n) => format!(
            " in {}",
            counted(n, "network namespace", "network namespaces")
        ),
        None => String::new(),
    };
    let findings = match report.duplicates.len() {
        0 => "no duplicate 4-tuples".to_owned(),
        n => format!(
            "{}, {}",
            counted(n, "duplicate 4-tuple", "duplicate 4-tuples"),
            counted(report.starving(), "starving socket", "starving sockets")
        ),
    };
    let _ = writeln!(out, "scanned {sockets}{namespaces}: {findings}");
    out
}

/// "1 thing", "2 things".
fn counted(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// `python3 (pid 812), python3 (pid 813)`, or `-` when none was found.
fn process_list(processes: &[Process]) -> String {
    if processes.is_empty() {
        return "-".to_owned();
    }
    processes
        .iter()
        .map(|p| format!("{} (pid {})", p.comm, p.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

/// Writes rows indented by two spaces, columns padded to the widest cell and
/// separated by two spaces; the last column is not padded.
fn write_aligned<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(netns: Option<&str>) -> Report {
        Report {
            scanned: 3012,
            duplicates: vec![
                DuplicateReport {
                    netns: netns.map(str::to_owned),
                    local: "127.0.0.1:5000".to_owned(),
                    remote: "127.0.0.2:53".to_owned(),
                    sockets: vec![
                        SocketReport {
                            inode: 41233,
                            uid: 0,
                            family: Family::Ipv4,
                            receiving: false,
                            processes: vec![Process {
                                pid: 812,
                                comm: "resolver".to_owned(),
                            }],
                        },
                        SocketReport {
                            inode: 41290,
                            uid: 1000,
                            family: Family::Ipv6,
                            receiving: true,
                            processes: vec![
                                Process {
                                    pid: 813,
                                    comm: "worker".to_owned(),
                                },
                                Process {
                                    pid: 900,
                                    comm: "worker".to_owned(),
                                },
                            ],
                        },
                    ],
                },
                DuplicateReport {
                    netns: netns.map(str::to_owned),
                    local: "[::1]:5001".to_owned(),
                    remote: "[::1]:6001".to_owned(),
                    sockets: vec![
                        SocketReport {
                            inode: 7,
                            uid: 0,
                            family: Family::Ipv6,
                            receiving: true,
                            processes: vec![],
                        },
                        SocketReport {
                            inode: 8,
                            uid: 0,
                            family: Family::Ipv6,
                            receiving: false,
                            processes: vec![],
                        },
                    ],
                },
            ],
            partial: false,
            namespaces_scanned: None,
        }
    }

    #[test]
    fn json_has_exactly_the_documented_fields() {
        let json = render_json(&sample(None));
        assert_eq!(
            json,
            concat!(
                r#"{"scanned":3012,"duplicates":["#,
                r#"{"local":"127.0.0.1:5000","remote":"127.0.0.2:53","sockets":["#,
                r#"{"inode":41233,"uid":0,"family":"ipv4","receiving":false,"processes":[{"pid":812,"comm":"resolver"}]},"#,
                r#"{"inode":41290,"uid":1000,"family":"ipv6","receiving":true,"processes":[{"pid":813,"comm":"worker"},{"pid":900,"comm":"worker"}]}]},"#,
                r#"{"local":"[::1]:5001","remote":"[::1]:6001","sockets":["#,
                r#"{"inode":7,"uid":0,"family":"ipv6","receiving":true,"processes":[]},"#,
                r#"{"inode":8,"uid":0,"family":"ipv6","receiving":false,"processes":[]}]}]}"#,
                "\n"
            )
        );
    }

    #[test]
    fn json_names_the_namespace_and_says_when_partial() {
        let mut report = sample(Some("blue"));
        report.partial = true;
        let value: serde_json::Value = serde_json::from_str(&render_json(&report)).unwrap();
        assert_eq!(value["partial"], true);
        assert_eq!(value["duplicates"][0]["netns"], "blue");
        assert_eq!(value["duplicates"][1]["netns"], "blue");
    }

    #[test]
    fn json_without_duplicates() {
        let report = Report {
            scanned: 5,
            duplicates: vec![],
            partial: false,
            namespaces_scanned: None,
        };
        assert_eq!(render_json(&report), "{\"scanned\":5,\"duplicates\":[]}\n");
    }

    #[test]
    fn table_shows_each_group_and_a_summary() {
        let table = render_table(&sample(None));
        let expected = "\
127.0.0.1:5000 -> 127.0.0.2:53: 2 sockets, 1 receiving, 1 starving
  INODE  UID   FAMILY  TRAFFIC    PROCESSES
  41233  0     ipv4    starving   resolver (pid 812)
  41290  1000  ipv6    receiving  worker (pid 813), worker (pid 900)

[::1]:5001 -> [::1]:6001: 2 sockets, 1 receiving, 1 starving
  INODE  UID  FAMILY  TRAFFIC    PROCESSES
  7      0    ipv6    receiving  -
  8      0    ipv6    starving   -

scanned 3012 connected UDP sockets: 2 duplicate 4-tuples, 2 starving sockets
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_names_namespaces_with_all_netns() {
        let mut report = sample(Some("blue"));
        report.namespaces_scanned = Some(3);
        let table = render_table(&report);
        assert!(
            table.starts_with("netns blue: 127.0.0.1:5000 -> 127.0.0.2:53: "),
            "{table}"
        );
        assert!(
            table.ends_with(" in 3 network namespaces: 2 duplicate 4-tuples, 2 starving sockets\n")
        );
    }

    #[test]
    fn table_without_duplicates_is_one_line() {
        let report = Report {
            scanned: 1,
            duplicates: vec![],
            partial: false,
            namespaces_scanned: Some(1),
        };
        assert_eq!(
            render_table(&report),
            "scanned 1 connected UDP socket in 1 network namespace: no duplicate 4-tuples\n"
        );
    }
}
