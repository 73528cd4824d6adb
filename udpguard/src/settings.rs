//! The guard's settings as the user names them: mode, errno and auto-bind policy.
use std::{fmt, str::FromStr};

use serde::Serialize;
use udpguard_common::{Config, autobind, errno, mode};

/// A setting the user names with a word on the command line (`enforce`, `eperm`, ...).
pub trait Choice: Copy + Sized + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];
    /// The word for it.
    fn word(self) -> &'static str;

    /// The value a word names (any case).
    fn from_word(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.word().eq_ignore_ascii_case(text))
    }
}

/// Parses any [`Choice`], with a message listing the words it takes.
fn parse_choice<T: Choice>(text: &str) -> Result<T, String> {
    T::from_word(text).ok_or_else(|| {
        let words: Vec<&str> = T::ALL.iter().map(|c| c.word()).collect();
        format!("{text:?} is none of {}", words.join(", "))
    })
}

/// What to do with a conflicting `connect()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the connect.
    Enforce,
    /// Let it through, but count it.
    Audit,
}

/// The errno a refused `connect()` fails with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// "Operation not permitted": what a cgroup program's refusal gives on every kernel.
    Eperm,
    /// "Address already in use" (needs bpf_set_retval, Linux >= 5.18).
    Eaddrinuse,
    /// "Cannot assign requested address" (needs bpf_set_retval, Linux >= 5.18).
    Eaddrnotavail,
}

impl Mode {
    pub const fn raw(self) -> u32 {
        match self {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        }
    }

    pub const fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            mode::ENFORCE => Some(Mode::Enforce),
            mode::AUDIT => Some(Mode::Audit),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl Errno {
    pub const fn raw(self) -> u32 {
        match self {
            Errno::Eperm => errno::EPERM,
            Errno::Eaddrinuse => errno::EADDRINUSE,
            Errno::Eaddrnotavail => errno::EADDRNOTAVAIL,
        }
    }

    pub const fn from_raw(raw: u32) -> Option<Errno> {
        match raw {
            errno::EPERM => Some(Errno::Eperm),
            errno::EADDRINUSE => Some(Errno::Eaddrinuse),
            errno::EADDRNOTAVAIL => Some(Errno::Eaddrnotavail),
            _ => None,
        }
    }

    /// The symbolic name, as in `errno.h`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::Eperm => "EPERM",
            Errno::Eaddrinuse => "EADDRINUSE",
            Errno::Eaddrnotavail => "EADDRNOTAVAIL",
        }
    }

    /// True when refusing with this errno needs `bpf_set_retval`.
    pub const fn needs_set_retval(self) -> bool {
        !matches!(self, Errno::Eperm)
    }
}

/// What to do with a socket that gets its port at connect time (auto-bind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Autobind {
    /// Let it through unchanged, counted as not checked.
    Allow,
    /// Clear its SO_REUSEADDR/SO_REUSEPORT first, so the kernel picks a port no other socket
    /// holds (the application then reads 0 for those options).
    Unique,
}

impl Autobind {
    pub const fn raw(self) -> u32 {
        match self {
            Autobind::Allow => autobind::ALLOW,
            Autobind::Unique => autobind::UNIQUE,
        }
    }

    pub const fn from_raw(raw: u32) -> Option<Autobind> {
        match raw {
            autobind::ALLOW => Some(Autobind::Allow),
            autobind::UNIQUE => Some(Autobind::Unique),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Autobind::Allow => "allow",
            Autobind::Unique => "unique",
        }
    }
}

impl Choice for Mode {
    const ALL: &'static [Mode] = &[Mode::Enforce, Mode::Audit];
    fn word(self) -> &'static str {
        self.name()
    }
}

impl Choice for Errno {
    const ALL: &'static [Errno] = &[Errno::Eperm, Errno::Eaddrinuse, Errno::Eaddrnotavail];
    fn word(self) -> &'static str {
        match self {
            Errno::Eperm => "eperm",
            Errno::Eaddrinuse => "eaddrinuse",
            Errno::Eaddrnotavail => "eaddrnotavail",
        }
    }
}

impl Choice for Autobind {
    const ALL: &'static [Autobind] = &[Autobind::Allow, Autobind::Unique];
    fn word(self) -> &'static str {
        self.name()
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_choice(text)
    }
}

impl FromStr for Errno {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_choice(text)
    }
}

impl FromStr for Autobind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_choice(text)
    }
}

/// Mode, errno and auto-bind policy together, as the kernel programs read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub errno: Errno,
    pub autobind: Autobind,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            errno: Errno::Eperm,
            autobind: Autobind::Allow,
        }
    }
}

/// "mode enforce, errno EPERM, autobind allow": how every verb states them.
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode {}, errno {}, autobind {}",
            self.mode.name(),
            self.errno.name(),
            self.autobind.name()
        )
    }
}

impl Settings {
    /// These settings with whatever the user gave on the command line.
    pub fn with(
        self,
        mode: Option<Mode>,
        errno: Option<Errno>,
        autobind: Option<Autobind>,
    ) -> Settings {
        Settings {
            mode: mode.unwrap_or(self.mode),
            errno: errno.unwrap_or(self.errno),
            autobind: autobind.unwrap_or(self.autobind),
        }
    }

    /// The config map's value for these settings, keeping the `flags` the agent manages.
    pub fn to_config(self, flags: u32) -> Config {
        Config {
            mode: self.mode.raw(),
            errno: self.errno.raw(),
            autobind: self.autobind.raw(),
            flags,
        }
    }

    /// The settings a config map holds; unknown values read as the defaults.
    pub fn from_config(config: Config) -> Settings {
        let default = Settings::default();
        Settings {
            mode: Mode::from_raw(config.mode).unwrap_or(default.mode),
            errno: Errno::from_raw(config.errno).unwrap_or(default.errno),
            autobind: Autobind::from_raw(config.autobind).unwrap_or(default.autobind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        for mode in [Mode::Enforce, Mode::Audit] {
            for errno in [Errno::Eperm, Errno::Eaddrinuse, Errno::Eaddrnotavail] {
                for autobind in [Autobind::Allow, Autobind::Unique] {
                    let settings = Settings {
                        mode,
                        errno,
                        autobind,
                    };
                    assert_eq!(Settings::from_config(settings.to_config(0)), settings);
                }
            }
        }
    }

    #[test]
    fn command_line_overrides_only_what_it_names() {
        let old = Settings {
            mode: Mode::Audit,
            errno: Errno::Eaddrinuse,
            autobind: Autobind::Unique,
        };
        assert_eq!(old.with(None, None, None), old);
        assert_eq!(
            old.with(Some(Mode::Enforce), None, None).errno,
            Errno::Eaddrinuse
        );
        assert_eq!(old.with(None, Some(Errno::Eperm), None).mode, Mode::Audit);
        assert_eq!(
            old.with(None, None, Some(Autobind::Allow)).mode,
            Mode::Audit
        );
    }

    #[test]
    fn settings_are_named_by_words_and_stated_in_one_line() {
        assert_eq!("audit".parse::<Mode>(), Ok(Mode::Audit));
        assert_eq!("EADDRINUSE".parse::<Errno>(), Ok(Errno::Eaddrinuse));
        assert!(
            "sometimes"
                .parse::<Autobind>()
                .unwrap_err()
                .contains("allow, unique")
        );
        assert_eq!(
            Settings::default().to_string(),
            "mode enforce, errno EPERM, autobind allow"
        );
    }

    #[test]
    fn only_eperm_works_without_set_retval() {
        assert!(!Errno::Eperm.needs_set_retval());
        assert!(Errno::Eaddrinuse.needs_set_retval());
        assert!(Errno::Eaddrnotavail.needs_set_retval());
    }
}
