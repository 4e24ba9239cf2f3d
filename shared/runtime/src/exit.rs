//! The exit-code contract shared by every imaged binary.
//!
//! Every daemon and one-shot command ends with one of these codes, so that
//! operators, systemd units and scripts can tell outcomes apart without
//! parsing logs:
//!
//! | code | variant | meaning |
//! |-----:|---------|---------|
//! | 0 | [`ExitCode::Success`] | all work done, or a requested stop completed (in-flight work finished or was safely abandoned) |
//! | 1 | [`ExitCode::WorkFailed`] | the run completed but some units of work failed (e.g. an image could not be scrubbed) |
//! | 2 | [`ExitCode::Usage`] | bad command line or invalid configuration; retrying without a change will not help |
//! | 3 | [`ExitCode::BackendUnavailable`] | the catalog database or a storage backend stayed unreachable after retries |
//! | 4 | [`ExitCode::Refused`] | another instance holds the lock, or the environment refuses the run (e.g. wrong permissions on a secret) |
//! | 70 | [`ExitCode::Internal`] | internal error (a bug); same value as `EX_SOFTWARE` from `sysexits.h` |
//!
//! A graceful stop (SIGTERM/SIGINT) exits 0 unless the work itself reported
//! a failure first; a second signal during the drain also exits 0, because
//! every unit of work is designed to be abandonable and is picked up again on
//! the next start. systemd units can therefore use `Restart=on-failure`
//! without restarting after an operator's stop, and may list
//! `RestartPreventExitStatus=2 4` so that a broken configuration or a held
//! lock does not restart in a loop.

/// Process exit status of an imaged binary; see the module docs for the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitCode {
    /// 0: everything done, or a requested stop completed.
    Success = 0,
    /// 1: the run completed but some units of work failed.
    WorkFailed = 1,
    /// 2: usage or configuration error.
    Usage = 2,
    /// 3: database or storage backend unreachable after retries.
    BackendUnavailable = 3,
    /// 4: another instance holds the lock, or the run was refused.
    Refused = 4,
    /// 70: internal error (`EX_SOFTWARE`).
    Internal = 70,
}

impl ExitCode {
    /// Numeric value passed to the operating system.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Maps a numeric status back to the contract, if it is one of ours.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::WorkFailed,
            2 => Self::Usage,
            3 => Self::BackendUnavailable,
            4 => Self::Refused,
            70 => Self::Internal,
            _ => return None,
        })
    }

    /// The more severe of two outcomes, for combining results of several
    /// workers into one process status: any failure beats success, and a
    /// configuration, backend, refusal or internal error beats partial work
    /// failure.
    pub fn worst(self, other: Self) -> Self {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    fn severity(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::WorkFailed => 1,
            Self::BackendUnavailable => 2,
            Self::Refused => 3,
            Self::Usage => 4,
            Self::Internal => 5,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Success => "success",
            Self::WorkFailed => "work failed",
            Self::Usage => "usage or configuration error",
            Self::BackendUnavailable => "backend unavailable",
            Self::Refused => "refused",
            Self::Internal => "internal error",
        };
        write!(f, "{name} ({})", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ExitCode; 6] = [
        ExitCode::Success,
        ExitCode::WorkFailed,
        ExitCode::Usage,
        ExitCode::BackendUnavailable,
        ExitCode::Refused,
        ExitCode::Internal,
    ];

    #[test]
    fn documented_values_are_stable() {
        let values: Vec<u8> = ALL.iter().map(|c| c.code()).collect();
        assert_eq!(values, [0, 1, 2, 3, 4, 70]);
    }

    #[test]
    fn from_code_round_trips_and_rejects_unknown() {
        for code in ALL {
            assert_eq!(ExitCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ExitCode::from_code(5), None);
        assert_eq!(ExitCode::from_code(255), None);
    }

    #[test]
    fn worst_prefers_the_more_severe_outcome() {
        assert_eq!(
            ExitCode::Success.worst(ExitCode::WorkFailed),
            ExitCode::WorkFailed
        );
        assert_eq!(
            ExitCode::WorkFailed.worst(ExitCode::Success),
            ExitCode::WorkFailed
        );
        assert_eq!(
            ExitCode::WorkFailed.worst(ExitCode::BackendUnavailable),
            ExitCode::BackendUnavailable
        );
        assert_eq!(ExitCode::Usage.worst(ExitCode::Refused), ExitCode::Usage);
        assert_eq!(
            ExitCode::Internal.worst(ExitCode::Usage),
            ExitCode::Internal
        );
    }

    #[test]
    fn converts_to_process_exit_code() {
        let process: std::process::ExitCode = ExitCode::Usage.into();
        assert_eq!(process, std::process::ExitCode::from(2));
    }
}
