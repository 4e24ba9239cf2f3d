//! Helpers shared by the conformance test bodies.

use chrono::NaiveDateTime;

/// A point in time `secs` seconds ago, at whole-second precision so that
/// it survives MySQL's DATETIME unchanged.
pub fn ago(secs: i64) -> NaiveDateTime {
    let t = imaged_catalog::time::utcnow() - chrono::Duration::seconds(secs);
    chrono::SubsecRound::trunc_subsecs(t, 0)
}
