//! Timestamps the way Glance stores them: naive UTC, written on SQLite as
//! text `YYYY-MM-DD HH:MM:SS.ffffff`, as `DATETIME` (whole seconds) on MySQL
//! and as `timestamp without time zone` on PostgreSQL; read back in every
//! form Glance may have left (with or without fractional seconds).

use chrono::{NaiveDateTime, SubsecRound, Timelike, Utc};
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, MySql, Postgres, Sqlite, Type, encode::IsNull};

/// The current time as Glance produces it (`timeutils.utcnow()`), truncated
/// to microseconds.
pub fn utcnow() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// Formats a timestamp exactly as SQLAlchemy writes it into SQLite.
pub fn format_sqlite(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parses every text form a catalog may hold: with or without fractional
/// seconds (1–9 digits), with a space or `T` separator, with or without a
/// trailing `Z`/`+00:00` left by other tools.
pub fn parse_text(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    if let Some(t) = parse_glance_fast(s) {
        return Some(t);
    }
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t);
        }
    }
    None
}

/// Hand-rolled parser for the exact forms Glance writes
/// (`YYYY-MM-DD HH:MM:SS` with an optional `.` and 1–9 fraction digits);
/// listings decode millions of these, and the generic parser is much slower.
fn parse_glance_fast(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b' ' && b[10] != b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let mut v = 0u32;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let mut nanos = 0u32;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() == 20 || b.len() > 29 {
            return None;
        }
        let digits = b.len() - 20;
        nanos = num(20..b.len())? * 10u32.pow(9 - digits as u32);
    }
    let time =
        chrono::NaiveTime::from_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)?;
    Some(NaiveDateTime::new(date, time))
}

/// A catalog timestamp (naive UTC) that encodes and decodes in each
/// engine's Glance form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub NaiveDateTime);

impl From<NaiveDateTime> for Ts {
    fn from(t: NaiveDateTime) -> Self {
        Ts(t)
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<'_, Sqlite>>::encode(format_sqlite(&self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <String as Decode<'r, Sqlite>>::decode(value)?;
        parse_text(&s)
            .map(Ts)
            .ok_or_else(|| format!("unrecognised timestamp {s:?}").into())
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <NaiveDateTime as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <NaiveDateTime as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <NaiveDateTime as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        <NaiveDateTime as Decode<'r, Postgres>>::decode(value).map(Ts)
    }
}

impl Type<MySql> for Ts {
    fn type_info() -> <MySql as Database>::TypeInfo {
        <NaiveDateTime as Type<MySql>>::type_info()
    }
    fn compatible(ty: &<MySql as Database>::TypeInfo) -> bool {
        <NaiveDateTime as Type<MySql>>::compatible(ty)
    }
}

impl Encode<'_, MySql> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut <MySql as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        // DATETIME without precision: write whole seconds so that what is
        // read back equals what was written (MySQL would round instead).
        let whole = self.0.with_nanosecond(0).unwrap_or(self.0);
        <NaiveDateTime as Encode<'_, MySql>>::encode(whole, buf)
    }
}

impl<'r> Decode<'r, MySql> for Ts {
    fn decode(value: <MySql as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        <NaiveDateTime as Decode<'r, MySql>>::decode(value).map(Ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glance_forms_parse() {
        let t = parse_text("2026-11-27 08:30:03.838305").unwrap();
        assert_eq!(format_sqlite(&t), "2026-11-27 08:30:03.838305");
        let t = parse_text("2026-11-27 08:30:03").unwrap();
        assert_eq!(format_sqlite(&t), "2026-11-27 08:30:03.000000");
        let t = parse_text("2026-11-27T08:30:03.5Z").unwrap();
        assert_eq!(format_sqlite(&t), "2026-11-27 08:30:03.500000");
        assert!(parse_text("yesterday").is_none());
        assert!(parse_text("2026-13-27 08:30:03").is_none());
        assert!(parse_text("2026-11-27 08:30:03.").is_none());
        let t = parse_text("2026-11-27 08:30:03.1").unwrap();
        assert_eq!(format_sqlite(&t), "2026-11-27 08:30:03.100000");
        let t = parse_text("2026-11-27 08:30:03.123456789").unwrap();
        assert_eq!(t.nanosecond(), 123_456_789);
    }

    #[test]
    fn utcnow_has_microsecond_precision() {
        let t = utcnow();
        assert_eq!(t.nanosecond() % 1000, 0);
        assert_eq!(format_sqlite(&t).len(), 26);
    }
}
