//! The partition contract: which key types can split a table, how their values
//! are encoded, parsed and rendered, and how `[lower, upper]` is cut into
//! `count` ranges with Apache Spark's JDBC partitioning semantics.
//!
//! Spark's rule, kept here: the bounds only set the stride, they never filter.
//! The first range is open below (and also takes NULL keys), the last is open
//! above, so every row lands in exactly one partition whatever the bounds.
//! Unlike Spark, the boundaries are computed exactly (in `i128`), so range
//! widths differ by at most one unit and nothing overflows at the extremes.
//!
//! Every key value is an `i64`:
//! * `int2`/`int4`/`int8`: the integer itself;
//! * `date`: days since 1970-01-01 in the proleptic Gregorian calendar;
//! * `timestamp`: microseconds since 1970-01-01 00:00:00;
//! * `timestamptz`: microseconds since 1970-01-01 00:00:00 UTC.
//!
//! The calendar arithmetic is done here over `i64` (chrono stops at year
//! ±262143, PostgreSQL dates go to 5874897). Pure: no I/O, no database.

use std::fmt::Write as _;

/// A column type that can partition a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Date,
    Timestamp,
    Timestamptz,
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// 4714-11-24 BC (proleptic year -4713), Julian day 0: PostgreSQL's smallest
/// date and, at midnight, its smallest timestamp. (The documentation rounds
/// this to "4713 BC", counting in the Julian calendar.)
const DATE_MIN: i64 = -2_440_588;
/// 5874897-12-31, PostgreSQL's largest date.
const DATE_MAX: i64 = 2_145_042_905;
/// 4714-11-24 00:00:00 BC.
const TIMESTAMP_MIN: i64 = DATE_MIN * MICROS_PER_DAY;
/// PostgreSQL's largest timestamp, 294276-12-31 23:59:59.999999, is
/// 9_224_318_015_999_999_999 µs after 1970 and does not fit in an i64
/// (PostgreSQL counts from 2000-01-01). The encoding therefore ends at
/// i64::MAX = 294247-01-10 04:00:54.775807.
const TIMESTAMP_MAX: i64 = i64::MAX;

impl KeyType {
    /// Maps PostgreSQL's `format_type()` output to a key type: `smallint`,
    /// `integer`, `bigint`, `date`, `timestamp without time zone`,
    /// `timestamp with time zone`, the timestamps also with a precision such as
    /// `timestamp(3) without time zone`. The short names of [`KeyType::sql_name`]
    /// are accepted too. Anything else cannot partition a table.
    pub fn from_pg(type_name: &str) -> Option<KeyType> {
        let name = type_name.trim().to_ascii_lowercase();
        let name = strip_typmod(&name);
        match name.as_str() {
            "smallint" | "int2" => Some(KeyType::Int2),
            "integer" | "int4" | "int" => Some(KeyType::Int4),
            "bigint" | "int8" => Some(KeyType::Int8),
            "date" => Some(KeyType::Date),
            "timestamp without time zone" | "timestamp" => Some(KeyType::Timestamp),
            "timestamp with time zone" | "timestamptz" => Some(KeyType::Timestamptz),
            _ => None,
        }
    }

    /// The type's short SQL name, used in casts: `int2` `int4` `int8` `date`
    /// `timestamp` `timestamptz`.
    pub fn sql_name(self) -> &'static str {
        match self {
            KeyType::Int2 => "int2",
            KeyType::Int4 => "int4",
            KeyType::Int8 => "int8",
            KeyType::Date => "date",
            KeyType::Timestamp => "timestamp",
            KeyType::Timestamptz => "timestamptz",
        }
    }

    /// The smallest and largest value (inclusive) PostgreSQL accepts for the
    /// type, in this module's encoding. Verified against PostgreSQL 15:
    /// * date: 4714-11-24 BC ..= 5874897-12-31, i.e. -2440588 ..= 2145042905;
    /// * timestamp, timestamptz: 4714-11-24 00:00:00 BC (UTC) ..=
    ///   294247-01-10 04:00:54.775807 (UTC), i.e. -210866803200000000 ..= i64::MAX.
    ///   PostgreSQL goes on to 294276-12-31 23:59:59.999999, which an i64 count
    ///   of microseconds since 1970 cannot reach.
    pub fn domain(self) -> (i64, i64) {
        match self {
            KeyType::Int2 => (i16::MIN.into(), i16::MAX.into()),
            KeyType::Int4 => (i32::MIN.into(), i32::MAX.into()),
            KeyType::Int8 => (i64::MIN, i64::MAX),
            KeyType::Date => (DATE_MIN, DATE_MAX),
            KeyType::Timestamp | KeyType::Timestamptz => (TIMESTAMP_MIN, TIMESTAMP_MAX),
        }
    }

    fn is_integer(self) -> bool {
        matches!(self, KeyType::Int2 | KeyType::Int4 | KeyType::Int8)
    }

    /// Parses a user-written bound into this module's encoding.
    ///
    /// * integers: a decimal whole number, optionally signed, within the type's range;
    /// * date: `YYYY-MM-DD`, optionally followed by ` BC`;
    /// * timestamp: `YYYY-MM-DD` (midnight) or `YYYY-MM-DD[ T]HH:MM[:SS[.f]]` with
    ///   1 to 6 fraction digits, optionally followed by ` BC`;
    /// * timestamptz: as timestamp, the time optionally followed by an offset
    ///   `Z`, `±HH`, `±HH:MM` or `±HHMM` (a space before it is allowed);
    ///   without an offset the value is UTC.
    ///
    /// Years have at least four digits (`0045-03-15 BC`); there is no year 0.
    /// Surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// A message quoting `text` and saying what was expected, when it is not of
    /// the type's form, names an impossible date or time, or lies outside
    /// [`KeyType::domain`].
    pub fn parse_bound(self, text: &str) -> Result<i64, String> {
        let trimmed = text.trim();
        let parsed = if self.is_integer() {
            parse_integer(trimmed)
        } else {
            parse_datetime(self, trimmed)
        };
        let (min, max) = self.domain();
        let out_of_range = || {
            format!(
                "{text:?} is out of range for {} (expected {} to {})",
                self.sql_name(),
                self.display(min),
                self.display(max)
            )
        };
        match parsed {
            Ok(value) => match i64::try_from(value) {
                Ok(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(out_of_range()),
            },
            Err(Problem::Range) => Err(out_of_range()),
            Err(Problem::Shape) => Err(format!("{text:?} is not {}", self.expectation())),
            Err(Problem::Field(why)) => Err(format!("{text:?} is not {} ({why})", self.noun())),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => "an integer",
            KeyType::Date => "a date",
            KeyType::Timestamp => "a timestamp",
            KeyType::Timestamptz => "a timestamp with time zone",
        }
    }

    fn expectation(self) -> String {
        let noun = self.noun();
        match self {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                let (min, max) = self.domain();
                format!("{noun} (expected a whole number between {min} and {max})")
            }
            KeyType::Date => format!("{noun} (expected YYYY-MM-DD, optionally followed by \" BC\")"),
            KeyType::Timestamp => format!(
                "{noun} (expected YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS[.ffffff]], optionally followed by \" BC\")"
            ),
            KeyType::Timestamptz => format!(
                "{noun} (expected YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS[.ffffff]][Z|±HH[:MM]], optionally followed by \" BC\")"
            ),
        }
    }

    /// A typed SQL literal that PostgreSQL parses back to exactly `value`:
    /// `'-5'::int4`, `'2021-02-20'::date`, `'0045-03-15 BC'::date`,
    /// `'2021-02-20 13:45:00.5'::timestamp`, `'2021-02-20 13:45:00+00'::timestamptz`.
    ///
    /// Year-month-day order with a four-or-more-digit year is read the same
    /// under every DateStyle, and the explicit `+00` makes timestamptz
    /// literals independent of the session's TimeZone.
    pub fn literal(self, value: i64) -> String {
        format!("'{}'::{}", self.display(value), self.sql_name())
    }

    /// The value for people (and the text inside [`KeyType::literal`]), in
    /// PostgreSQL's ISO output style: `-5`, `2021-02-20`, `0045-03-15 BC`,
    /// `2021-02-20 13:45:00`, `2021-02-20 13:45:00.5`, `2021-02-20 13:45:00+00`.
    /// Fractional seconds appear only when non-zero, without trailing zeros;
    /// timestamptz is shown in UTC.
    pub fn display(self, value: i64) -> String {
        match self {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => value.to_string(),
            KeyType::Date => {
                let (year, month, day) = civil_from_days(value);
                let mut out = format_date(year, month, day);
                push_era(&mut out, year);
                out
            }
            KeyType::Timestamp | KeyType::Timestamptz => {
                let days = value.div_euclid(MICROS_PER_DAY);
                let of_day = value.rem_euclid(MICROS_PER_DAY);
                let (year, month, day) = civil_from_days(days);
                let mut out = format_date(year, month, day);
                let seconds = of_day / MICROS_PER_SECOND;
                let micros = of_day % MICROS_PER_SECOND;
                // Writing to a String cannot fail.
                let _ = write!(
                    out,
                    " {:02}:{:02}:{:02}",
                    seconds / 3600,
                    seconds / 60 % 60,
                    seconds % 60
                );
                if micros != 0 {
                    let fraction = format!("{micros:06}");
                    out.push('.');
                    out.push_str(fraction.trim_end_matches('0'));
                }
                if self == KeyType::Timestamptz {
                    out.push_str("+00");
                }
                push_era(&mut out, year);
                out
            }
        }
    }
}

/// Drops a precision such as the `(3)` in `timestamp(3) without time zone`.
fn strip_typmod(name: &str) -> String {
    match (name.find('('), name.find(')')) {
        (Some(open), Some(close)) if open < close => {
            let inner = &name[open + 1..close];
            if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
                return name.to_string();
            }
            let rest = &name[close + 1..];
            format!("{}{}", name[..open].trim_end(), rest)
        }
        _ => name.to_string(),
    }
}

fn format_date(year: i64, month: i64, day: i64) -> String {
    // PostgreSQL writes year N BC as N; proleptic year 0 is 1 BC.
    let shown = if year <= 0 { 1 - year } else { year };
    format!("{shown:04}-{month:02}-{day:02}")
}

fn push_era(out: &mut String, year: i64) {
    if year <= 0 {
        out.push_str(" BC");
    }
}

/// Why a bound did not parse; turned into a message by `parse_bound`.
enum Problem {
    /// Not of the expected shape at all.
    Shape,
    /// The right shape but an impossible field, e.g. month 13.
    Field(String),
    /// Well formed but far outside any domain.
    Range,
}

fn parse_integer(text: &str) -> Result<i128, Problem> {
    let digits = text
        .strip_prefix('-')
        .or_else(|| text.strip_prefix('+'))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::Shape);
    }
    // Only too many digits can fail here.
    text.parse::<i128>().map_err(|_| Problem::Range)
}

/// A cursor over ASCII input.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// Reads `min..=max` decimal digits (greedily) as a number and its width.
    fn digits(&mut self, min: usize, max: usize) -> Result<(i64, usize), Problem> {
        let start = self.pos;
        while self.pos - start < max && self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let width = self.pos - start;
        if width < min {
            return Err(Problem::Shape);
        }
        let value = self.bytes[start..self.pos]
            .iter()
            .fold(0_i64, |acc, &b| acc * 10 + i64::from(b - b'0'));
        Ok((value, width))
    }

    /// Exactly two digits.
    fn two(&mut self) -> Result<i64, Problem> {
        self.digits(2, 2).map(|(v, _)| v)
    }
}

/// Parses dates and timestamps into days (date) or microseconds (others),
/// in i128 so far-out-of-range input is reported as a range error.
fn parse_datetime(key: KeyType, text: &str) -> Result<i128, Problem> {
    let (body, bc) = match text.len().checked_sub(3) {
        Some(cut) if text.is_char_boundary(cut) && text[cut..].eq_ignore_ascii_case(" bc") => {
            (text[..cut].trim_end(), true)
        }
        _ => (text, false),
    };
    let mut cur = Cursor {
        bytes: body.as_bytes(),
        pos: 0,
    };
    // Nine digits reach far beyond every domain without overflowing below.
    let (written_year, _) = cur.digits(4, 9)?;
    if cur.peek().is_some_and(|b| b.is_ascii_digit()) {
        return Err(Problem::Range);
    }
    if !cur.eat(b'-') {
        return Err(Problem::Shape);
    }
    let month = cur.two()?;
    if !cur.eat(b'-') {
        return Err(Problem::Shape);
    }
    let day = cur.two()?;
    if written_year == 0 {
        return Err(Problem::Field(
            "there is no year 0; 1 BC is followed by 1 AD".to_string(),
        ));
    }
    let year = if bc { 1 - written_year } else { written_year };
    if !(1..=12).contains(&month) {
        return Err(Problem::Field(format!("month {month:02} does not exist")));
    }
    if day < 1 || day > days_in_month(year, month) {
        let era = if bc { " BC" } else { "" };
        return Err(Problem::Field(format!(
            "day {day:02} does not exist in {written_year:04}-{month:02}{era}"
        )));
    }
    let days = i128::from(days_from_civil(year, month, day));
    if key == KeyType::Date {
        return if cur.at_end() {
            Ok(days)
        } else {
            Err(Problem::Shape)
        };
    }
    let mut micros = days * i128::from(MICROS_PER_DAY);
    if cur.at_end() {
        return Ok(micros);
    }
    if !(cur.eat(b' ') || cur.eat(b'T')) {
        return Err(Problem::Shape);
    }
    let hour = cur.two()?;
    if !cur.eat(b':') {
        return Err(Problem::Shape);
    }
    let minute = cur.two()?;
    let mut second = 0;
    let mut fraction = 0;
    if cur.eat(b':') {
        second = cur.two()?;
        if cur.eat(b'.') {
            let (digits, width) = cur.digits(1, 6)?;
            if cur.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(Problem::Field(
                    "at most 6 fractional digits (microseconds)".to_string(),
                ));
            }
            fraction = (width..6).fold(digits, |acc, _| acc * 10);
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(Problem::Field(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day (expected 00:00:00 to 23:59:59)"
        )));
    }
    micros += i128::from((hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + fraction);
    if key == KeyType::Timestamptz && !cur.at_end() {
        cur.eat(b' ');
        let offset_seconds = parse_offset(&mut cur)?;
        // Local time minus its offset is UTC.
        micros -= i128::from(offset_seconds * MICROS_PER_SECOND);
    }
    if cur.at_end() {
        Ok(micros)
    } else {
        Err(Problem::Shape)
    }
}

/// `Z`, `±HH`, `±HH:MM` or `±HHMM`, in seconds east of UTC.
fn parse_offset(cur: &mut Cursor<'_>) -> Result<i64, Problem> {
    if cur.eat(b'Z') || cur.eat(b'z') {
        return Ok(0);
    }
    let sign = if cur.eat(b'+') {
        1
    } else if cur.eat(b'-') {
        -1
    } else {
        return Err(Problem::Shape);
    };
    let hours = cur.two()?;
    let minutes = if cur.eat(b':') || cur.peek().is_some_and(|b| b.is_ascii_digit()) {
        cur.two()?
    } else {
        0
    };
    // PostgreSQL accepts offsets up to 15:59.
    if hours > 15 || minutes > 59 {
        return Err(Problem::Field(format!(
            "{hours:02}:{minutes:02} is not a UTC offset (expected at most 15:59)"
        )));
    }
    Ok(sign * (hours * 3600 + minutes * 60))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year 0 = 1 BC).
/// Howard Hinnant's `days_from_civil`, with Euclidean division so negative
/// years need no special case.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One partition's slice of the key space, half-open `[lower, upper)`;
/// `None` is unbounded on that side. The first partition (`lower == None`)
/// also takes NULL keys; the last (`upper == None`) everything `>= lower`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyRange {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
}

impl KeyRange {
    /// Whether a key belongs to this range; `None` is a NULL key, which
    /// belongs to the range that is open below.
    pub fn contains(&self, value: Option<i64>) -> bool {
        match value {
            None => self.lower.is_none(),
            Some(v) => self.lower.is_none_or(|l| v >= l) && self.upper.is_none_or(|u| v < u),
        }
    }

    /// The range for people: `< 2021-02-22 or NULL`, `[2021-02-22, 2021-02-24)`,
    /// `>= 2021-02-26`, `all rows`.
    pub fn describe(&self, key: KeyType) -> String {
        match (self.lower, self.upper) {
            (None, None) => "all rows".to_string(),
            (None, Some(upper)) => format!("< {} or NULL", key.display(upper)),
            (Some(lower), Some(upper)) => {
                format!("[{}, {})", key.display(lower), key.display(upper))
            }
            (Some(lower), None) => format!(">= {}", key.display(lower)),
        }
    }
}

/// Splits `[lower, upper]` into `count` ranges with Spark's JDBC semantics:
/// the bounds set the stride and never filter, so the first range is open
/// below (and takes NULLs) and the last is open above.
///
/// With `width = upper - lower` (exact, in i128) and `n = min(count, width)`
/// ranges (Spark also shrinks the count rather than make empty partitions),
/// the inner boundaries are `lower + i * (width / n) + min(i, width % n)` for
/// `i` in `1..n`: the first `width % n` ranges are one unit wider, so widths
/// differ by at most one. `n == 1` gives the single range `{None, None}`.
///
/// # Panics
///
/// If `lower >= upper` or `count == 0`; callers validate both first.
pub fn stride_ranges(lower: i64, upper: i64, count: u32) -> Vec<KeyRange> {
    assert!(
        lower < upper,
        "stride_ranges requires lower < upper (got {lower} and {upper})"
    );
    assert!(count >= 1, "stride_ranges requires count >= 1");
    let width = i128::from(upper) - i128::from(lower);
    let n = width.min(i128::from(count));
    let step = width / n;
    let extra = width % n;
    // Every inner boundary lies strictly between lower and upper.
    let boundary = |i: i128| -> i64 {
        let b = i128::from(lower) + i * step + i.min(extra);
        i64::try_from(b).expect("an inner boundary lies between two i64 values")
    };
    let boundaries: Vec<i64> = (1..n).map(boundary).collect();
    ranges_between(&boundaries)
}

/// Ranges between ascending `boundaries`: `[(None, b0), (b0, b1), ...,
/// (bk, None)]`, the first also taking NULLs; no boundaries is one range.
///
/// # Panics
///
/// If the boundaries are not strictly ascending.
pub fn ranges_between(boundaries: &[i64]) -> Vec<KeyRange> {
    assert!(
        boundaries.windows(2).all(|w| w[0] < w[1]),
        "boundaries must ascend strictly"
    );
    let mut ranges = Vec::with_capacity(boundaries.len() + 1);
    let mut previous = None;
    for &b in boundaries {
        ranges.push(KeyRange {
            lower: previous,
            upper: Some(b),
        });
        previous = Some(b);
    }
    ranges.push(KeyRange {
        lower: previous,
        upper: None,
    });
    ranges
}

/// Boundaries that cut a distribution into `count` parts of about equal
/// weight. `points` are values with their weights, sorted by value (repeats
/// allowed); `nulls` is the weight of NULLs, which go to the first part. The
/// `k`-th boundary falls where the weight before it comes nearest `k / count` of
/// the whole. A value is never split: where one value alone outweighs a share,
/// fewer parts are made.
pub fn weighted_cuts(points: &[(i64, f64)], nulls: f64, count: u32) -> Vec<i64> {
    let total: f64 = nulls + points.iter().map(|p| p.1.max(0.0)).sum::<f64>();
    let mut cuts: Vec<i64> = Vec::new();
    if count < 2 || total <= 0.0 {
        return cuts;
    }
    let mut before = nulls;
    let mut k = 1;
    let mut i = 0;
    while i < points.len() && k < count {
        let value = points[i].0;
        let mut weight = 0.0;
        while i < points.len() && points[i].0 == value {
            weight += points[i].1.max(0.0);
            i += 1;
        }
        // The shares that end at this value or within its weight.
        while k < count {
            let share = total * f64::from(k) / f64::from(count);
            if before + weight < share {
                break;
            }
            // Cut before this value, or (when that is nearer) after it.
            if before < share && share - before > before + weight - share {
                break;
            }
            if before > 0.0 && cuts.last().is_none_or(|&c| value > c) {
                cuts.push(value);
            }
            k += 1;
        }
        before += weight;
    }
    cuts
}

/// The predicate selecting one range of a table's physical blocks (PostgreSQL
/// 14 and later scan it as a TID range): `ctid >= '(a,0)'::tid AND ctid <
/// '(b,0)'::tid`, open on a side that is `None`.
pub fn block_predicate(range: &KeyRange) -> Option<String> {
    let tid = |block: i64| format!("'({block},0)'::tid");
    match (range.lower, range.upper) {
        (None, None) => None,
        (None, Some(u)) => Some(format!("ctid < {}", tid(u))),
        (Some(l), Some(u)) => Some(format!("(ctid >= {} AND ctid < {})", tid(l), tid(u))),
        (Some(l), None) => Some(format!("ctid >= {}", tid(l))),
    }
}

/// A block range for people: `blocks < 100`, `blocks [100, 200)`, `blocks >= 900`.
pub fn describe_blocks(range: &KeyRange) -> String {
    match (range.lower, range.upper) {
        (None, None) => "all blocks".to_string(),
        (None, Some(u)) => format!("blocks < {u}"),
        (Some(l), Some(u)) => format!("blocks [{l}, {u})"),
        (Some(l), None) => format!("blocks >= {l}"),
    }
}

/// The WHERE predicate selecting one range of an already-quoted `column`,
/// with typed literals so the comparison is done in the column's type:
/// first `("c" < '10'::int4 OR "c" IS NULL)`, middle
/// `("c" >= '10'::int4 AND "c" < '20'::int4)`, last `"c" >= '90'::int4`,
/// and `None` (no predicate) for a range unbounded on both sides.
pub fn predicate(column: &str, key: KeyType, range: &KeyRange) -> Option<String> {
    match (range.lower, range.upper) {
        (None, None) => None,
        (None, Some(upper)) => Some(format!(
            "({column} < {} OR {column} IS NULL)",
            key.literal(upper)
        )),
        (Some(lower), Some(upper)) => Some(format!(
            "({column} >= {} AND {column} < {})",
            key.literal(lower),
            key.literal(upper)
        )),
        (Some(lower), None) => Some(format!("{column} >= {}", key.literal(lower))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [KeyType; 6] = [
        KeyType::Int2,
        KeyType::Int4,
        KeyType::Int8,
        KeyType::Date,
        KeyType::Timestamp,
        KeyType::Timestamptz,
    ];

    fn ts(days: i64, hour: i64, minute: i64, second: i64, micros: i64) -> i64 {
        days * MICROS_PER_DAY + (hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + micros
    }

    #[test]
    fn from_pg_maps_format_type_output() {
        let cases = [
            ("smallint", Some(KeyType::Int2)),
            ("integer", Some(KeyType::Int4)),
            ("bigint", Some(KeyType::Int8)),
            ("date", Some(KeyType::Date)),
            ("timestamp without time zone", Some(KeyType::Timestamp)),
            ("timestamp(3) without time zone", Some(KeyType::Timestamp)),
            ("timestamp(0) without time zone", Some(KeyType::Timestamp)),
            ("timestamp with time zone", Some(KeyType::Timestamptz)),
            ("timestamp(6) with time zone", Some(KeyType::Timestamptz)),
            ("int4", Some(KeyType::Int4)),
            ("timestamptz", Some(KeyType::Timestamptz)),
            ("numeric", None),
            ("numeric(10,2)", None),
            ("text", None),
            ("time without time zone", None),
            ("interval", None),
            ("real", None),
            ("timestamp(x) without time zone", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(KeyType::from_pg(name), want, "from_pg({name:?})");
        }
    }

    #[test]
    fn sql_names_match_serde_names() {
        for key in ALL {
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(json, format!("\"{}\"", key.sql_name()));
            assert_eq!(KeyType::from_pg(key.sql_name()), Some(key));
        }
    }

    #[test]
    fn domains_are_postgresql_limits() {
        assert_eq!(KeyType::Int2.domain(), (-32768, 32767));
        assert_eq!(KeyType::Int4.domain(), (-2_147_483_648, 2_147_483_647));
        assert_eq!(KeyType::Int8.domain(), (i64::MIN, i64::MAX));
        assert_eq!(KeyType::Date.domain(), (-2_440_588, 2_145_042_905));
        let ts_domain = (-210_866_803_200_000_000, i64::MAX);
        assert_eq!(KeyType::Timestamp.domain(), ts_domain);
        assert_eq!(KeyType::Timestamptz.domain(), ts_domain);
        let shown = [
            (KeyType::Date, "4714-11-24 BC", "5874897-12-31"),
            (
                KeyType::Timestamp,
                "4714-11-24 00:00:00 BC",
                "294247-01-10 04:00:54.775807",
            ),
            (
                KeyType::Timestamptz,
                "4714-11-24 00:00:00+00 BC",
                "294247-01-10 04:00:54.775807+00",
            ),
        ];
        for (key, low, high) in shown {
            let (min, max) = key.domain();
            assert_eq!(key.display(min), low);
            assert_eq!(key.display(max), high);
        }
    }

    /// Days since 1970-01-01 as PostgreSQL 15 computes them
    /// (`select 'D'::date - '1970-01-01'::date`).
    const DATE_ANCHORS: &[(&str, i64)] = &[
        ("4714-11-24 BC", -2_440_588),
        ("4001-02-29 BC", -2_180_439),
        ("0045-03-15 BC", -735_525),
        ("0005-02-29 BC", -720_930),
        ("0001-01-01 BC", -719_528),
        ("0001-12-31 BC", -719_163),
        ("0001-01-01", -719_162),
        ("1900-03-01", -25_508),
        ("1969-12-31", -1),
        ("1970-01-01", 0),
        ("2000-02-29", 11_016),
        ("2021-02-20", 18_678),
        ("10000-01-01", 2_932_897),
        ("262144-01-01", 95_026_602),
        ("5874897-12-31", 2_145_042_905),
    ];

    #[test]
    fn dates_match_postgresql_anchors() {
        for &(text, days) in DATE_ANCHORS {
            assert_eq!(KeyType::Date.parse_bound(text), Ok(days), "parse {text:?}");
            assert_eq!(KeyType::Date.display(days), text, "display {days}");
            assert_eq!(
                KeyType::Date.literal(days),
                format!("'{text}'::date"),
                "literal {days}"
            );
        }
    }

    #[test]
    fn parse_bound_accepts() {
        let day = 18_678; // 2021-02-20
        let cases: Vec<(KeyType, &str, i64)> = vec![
            (KeyType::Int2, "-32768", -32768),
            (KeyType::Int2, "32767", 32767),
            (KeyType::Int2, " +7 ", 7),
            (KeyType::Int4, "-5", -5),
            (KeyType::Int4, "007", 7),
            (KeyType::Int4, "2147483647", 2_147_483_647),
            (KeyType::Int8, "-9223372036854775808", i64::MIN),
            (KeyType::Int8, "9223372036854775807", i64::MAX),
            (KeyType::Date, "2021-02-20", day),
            (KeyType::Date, " 2021-02-20 ", day),
            (KeyType::Date, "0045-03-15 bc", -735_525),
            (KeyType::Date, "2024-02-29", 19_782),
            (KeyType::Timestamp, "2021-02-20", ts(day, 0, 0, 0, 0)),
            (
                KeyType::Timestamp,
                "2021-02-20 13:45",
                ts(day, 13, 45, 0, 0),
            ),
            (
                KeyType::Timestamp,
                "2021-02-20T13:45:07",
                ts(day, 13, 45, 7, 0),
            ),
            (
                KeyType::Timestamp,
                "2021-02-20 13:45:00.5",
                ts(day, 13, 45, 0, 500_000),
            ),
            (
                KeyType::Timestamp,
                "2021-02-20 13:45:00.000001",
                ts(day, 13, 45, 0, 1),
            ),
            (
                KeyType::Timestamp,
                "2021-02-20 23:59:59.999999",
                ts(day, 23, 59, 59, 999_999),
            ),
            (KeyType::Timestamp, "1969-12-31 23:59:59.999999", -1),
            (
                KeyType::Timestamp,
                "4714-11-24 00:00:00 BC",
                -210_866_803_200_000_000,
            ),
            (
                KeyType::Timestamp,
                "4714-11-24 BC",
                -210_866_803_200_000_000,
            ),
            (KeyType::Timestamp, "294247-01-10 04:00:54.775807", i64::MAX),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45",
                ts(day, 13, 45, 0, 0),
            ),
            (KeyType::Timestamptz, "2021-02-20", ts(day, 0, 0, 0, 0)),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45:00Z",
                ts(day, 13, 45, 0, 0),
            ),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45:00+00",
                ts(day, 13, 45, 0, 0),
            ),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45:00 +01",
                ts(day, 12, 45, 0, 0),
            ),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45+05:30",
                ts(day, 8, 15, 0, 0),
            ),
            (
                KeyType::Timestamptz,
                "2021-02-20T13:45:00.123456-0800",
                ts(day, 21, 45, 0, 123_456),
            ),
            (
                KeyType::Timestamptz,
                "2021-02-20 13:45:00+15:59",
                ts(day - 1, 21, 46, 0, 0),
            ),
            (
                KeyType::Timestamptz,
                "4714-11-23 23:00:00-01 BC",
                -210_866_803_200_000_000,
            ),
            (
                KeyType::Timestamptz,
                "294247-01-10 05:00:54.775807+01",
                i64::MAX,
            ),
        ];
        for (key, text, want) in cases {
            assert_eq!(
                key.parse_bound(text),
                Ok(want),
                "{key:?}.parse_bound({text:?})"
            );
        }
    }

    #[test]
    fn parse_bound_error_messages() {
        assert_eq!(
            KeyType::Date.parse_bound("2021-13-45"),
            Err("\"2021-13-45\" is not a date (month 13 does not exist)".to_string())
        );
        assert_eq!(
            KeyType::Int2.parse_bound("abc"),
            Err(
                "\"abc\" is not an integer (expected a whole number between -32768 and 32767)"
                    .to_string()
            )
        );
        assert_eq!(
            KeyType::Date.parse_bound("20210220"),
            Err(
                "\"20210220\" is not a date (expected YYYY-MM-DD, optionally followed by \" BC\")"
                    .to_string()
            )
        );
        assert_eq!(
            KeyType::Date.parse_bound("5874898-01-01"),
            Err(
                "\"5874898-01-01\" is out of range for date (expected 4714-11-24 BC to 5874897-12-31)"
                    .to_string()
            )
        );
    }

    #[test]
    fn parse_bound_rejects() {
        let cases = [
            (KeyType::Int2, "", "is not an integer"),
            (KeyType::Int2, "32768", "out of range for int2"),
            (KeyType::Int2, "-32769", "out of range for int2"),
            (KeyType::Int4, "2147483648", "out of range for int4"),
            (KeyType::Int4, "1.5", "is not an integer"),
            (KeyType::Int4, "1e3", "is not an integer"),
            (KeyType::Int4, "1_000", "is not an integer"),
            (KeyType::Int4, "--1", "is not an integer"),
            (KeyType::Int4, "+", "is not an integer"),
            (KeyType::Int4, "- 1", "is not an integer"),
            (KeyType::Int8, "9223372036854775808", "out of range for int8"),
            (KeyType::Int8, "-9223372036854775809", "out of range for int8"),
            (
                KeyType::Int8,
                "99999999999999999999999999999999999999999999",
                "out of range for int8",
            ),
            (KeyType::Date, "", "is not a date (expected YYYY-MM-DD"),
            (KeyType::Date, "2021-2-20", "expected YYYY-MM-DD"),
            (KeyType::Date, "21-02-20", "expected YYYY-MM-DD"),
            (KeyType::Date, "2021/02/20", "expected YYYY-MM-DD"),
            (KeyType::Date, "2021-02-20 13:45", "expected YYYY-MM-DD"),
            (KeyType::Date, "-2021-02-20", "expected YYYY-MM-DD"),
            (KeyType::Date, "2021-02-20 AD", "expected YYYY-MM-DD"),
            (KeyType::Date, "2021-00-10", "month 00 does not exist"),
            (KeyType::Date, "2021-02-29", "day 29 does not exist in 2021-02"),
            (KeyType::Date, "1900-02-29", "day 29 does not exist in 1900-02"),
            (KeyType::Date, "0004-02-29 BC", "day 29 does not exist in 0004-02 BC"),
            (KeyType::Date, "2021-04-31", "day 31 does not exist"),
            (KeyType::Date, "2021-01-00", "day 00 does not exist"),
            (KeyType::Date, "0000-01-01", "there is no year 0"),
            (KeyType::Date, "4714-11-23 BC", "out of range for date"),
            (KeyType::Date, "5874898-01-01", "out of range for date"),
            (KeyType::Date, "1234567890-01-01", "out of range for date"),
            (KeyType::Timestamp, "2021-02-20 13", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20 1:45", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20 13:45:00.", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20  13:45", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20 13:45:00Z", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20 13:45:00+01", "is not a timestamp (expected"),
            (KeyType::Timestamp, "2021-02-20 24:00:00", "24:00:00 is not a time of day"),
            (KeyType::Timestamp, "2021-02-20 13:60", "13:60:00 is not a time of day"),
            (KeyType::Timestamp, "2021-02-20 13:45:60", "13:45:60 is not a time of day"),
            (
                KeyType::Timestamp,
                "2021-02-20 13:45:00.1234567",
                "at most 6 fractional digits",
            ),
            (KeyType::Timestamp, "2021-02-30 13:45", "day 30 does not exist"),
            (
                KeyType::Timestamp,
                "4714-11-23 23:59:59.999999 BC",
                "out of range for timestamp (expected 4714-11-24 00:00:00 BC to 294247-01-10 04:00:54.775807)",
            ),
            (
                KeyType::Timestamp,
                "294247-01-10 04:00:54.775808",
                "out of range for timestamp",
            ),
            (KeyType::Timestamp, "294276-12-31 23:59:59", "out of range for timestamp"),
            (KeyType::Timestamptz, "2021-02-20 13:45+16", "16:00 is not a UTC offset"),
            (KeyType::Timestamptz, "2021-02-20 13:45+01:60", "01:60 is not a UTC offset"),
            (KeyType::Timestamptz, "2021-02-20 13:45+1", "is not a timestamp with time zone (expected"),
            (KeyType::Timestamptz, "2021-02-20 13:45+01:", "(expected"),
            (KeyType::Timestamptz, "2021-02-20 13:45 UTC", "(expected"),
            (KeyType::Timestamptz, "2021-02-20+01", "(expected"),
            (KeyType::Timestamptz, "2021-02-20 13:45+01:00:00", "(expected"),
            (
                KeyType::Timestamptz,
                "4714-11-24 00:59:59+01 BC",
                "out of range for timestamptz",
            ),
            (
                KeyType::Timestamptz,
                "294247-01-10 04:00:54.775807-00:01",
                "out of range for timestamptz",
            ),
        ];
        for (key, text, want) in cases {
            let err = key
                .parse_bound(text)
                .expect_err(&format!("{key:?}.parse_bound({text:?}) should fail"));
            assert!(
                err.contains(want),
                "{key:?}.parse_bound({text:?}) = {err:?}, want {want:?}"
            );
            assert!(
                err.starts_with(&format!("{text:?} ")),
                "{err:?} quotes the input"
            );
        }
    }

    #[test]
    fn literals_and_display() {
        let day = 18_678; // 2021-02-20
        let cases = [
            (KeyType::Int2, -5, "'-5'::int2", "-5"),
            (KeyType::Int4, -5, "'-5'::int4", "-5"),
            (
                KeyType::Int8,
                i64::MIN,
                "'-9223372036854775808'::int8",
                "-9223372036854775808",
            ),
            (KeyType::Date, day, "'2021-02-20'::date", "2021-02-20"),
            (
                KeyType::Date,
                -735_525,
                "'0045-03-15 BC'::date",
                "0045-03-15 BC",
            ),
            (KeyType::Date, -1, "'1969-12-31'::date", "1969-12-31"),
            (
                KeyType::Timestamp,
                ts(day, 13, 45, 0, 500_000),
                "'2021-02-20 13:45:00.5'::timestamp",
                "2021-02-20 13:45:00.5",
            ),
            (
                KeyType::Timestamp,
                ts(day, 13, 45, 0, 0),
                "'2021-02-20 13:45:00'::timestamp",
                "2021-02-20 13:45:00",
            ),
            (
                KeyType::Timestamp,
                ts(day, 0, 0, 0, 120),
                "'2021-02-20 00:00:00.00012'::timestamp",
                "2021-02-20 00:00:00.00012",
            ),
            (
                KeyType::Timestamp,
                -1,
                "'1969-12-31 23:59:59.999999'::timestamp",
                "1969-12-31 23:59:59.999999",
            ),
            (
                KeyType::Timestamp,
                ts(-735_525, 6, 7, 8, 9),
                "'0045-03-15 06:07:08.000009 BC'::timestamp",
                "0045-03-15 06:07:08.000009 BC",
            ),
            (
                KeyType::Timestamptz,
                ts(day, 13, 45, 0, 0),
                "'2021-02-20 13:45:00+00'::timestamptz",
                "2021-02-20 13:45:00+00",
            ),
            (
                KeyType::Timestamptz,
                ts(day, 13, 45, 0, 250_000),
                "'2021-02-20 13:45:00.25+00'::timestamptz",
                "2021-02-20 13:45:00.25+00",
            ),
            (
                KeyType::Timestamptz,
                ts(-735_525, 23, 0, 0, 0),
                "'0045-03-15 23:00:00+00 BC'::timestamptz",
                "0045-03-15 23:00:00+00 BC",
            ),
        ];
        for (key, value, literal, display) in cases {
            assert_eq!(key.literal(value), literal, "{key:?}.literal({value})");
            assert_eq!(key.display(value), display, "{key:?}.display({value})");
            assert_eq!(
                key.parse_bound(display),
                Ok(value),
                "{key:?} reparse {display:?}"
            );
        }
    }

    /// Checks every documented property of a split of `[lower, upper]` into
    /// `count`, probing membership with `extra` values and every edge.
    fn check_split(lower: i64, upper: i64, count: u32, extra: &[i64]) {
        let ranges = stride_ranges(lower, upper, count);
        assert_eq!(ranges, stride_ranges(lower, upper, count), "deterministic");
        let width = i128::from(upper) - i128::from(lower);
        let n = usize::try_from(width.min(i128::from(count))).unwrap();
        assert_eq!(ranges.len(), n, "min(count, width) ranges");
        assert_eq!(ranges[0].lower, None, "first is open below");
        assert_eq!(ranges[n - 1].upper, None, "last is open above");
        for pair in ranges.windows(2) {
            assert!(pair[0].upper.is_some(), "only the last is open above");
            assert_eq!(pair[0].upper, pair[1].lower, "contiguous");
        }
        let inner: Vec<i64> = ranges.iter().skip(1).map(|r| r.lower.unwrap()).collect();
        // Widths from lower through the boundaries to upper; the first and last
        // range count from the bounds they extend past.
        let mut edges = vec![i128::from(lower)];
        edges.extend(inner.iter().map(|&b| i128::from(b)));
        edges.push(i128::from(upper));
        let widths: Vec<i128> = edges.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            widths.iter().all(|&w| w >= 1),
            "ordered, none empty: {widths:?}"
        );
        assert_eq!(widths.iter().sum::<i128>(), width);
        let (min_w, max_w) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
        assert!(max_w - min_w <= 1, "widths within one: {widths:?}");
        assert!(
            widths.windows(2).all(|w| w[0] >= w[1]),
            "wider ranges first"
        );

        let mut probes = vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, 0];
        // Probing around every boundary would be quadratic; the first and last
        // few plus the bounds cover the edge cases.
        let sampled = inner.iter().take(8).chain(inner.iter().rev().take(8));
        for &b in sampled.chain([lower, upper].iter()) {
            probes.extend([b.saturating_sub(1), b, b.saturating_add(1)]);
        }
        probes.extend_from_slice(extra);
        for v in probes {
            let holders = ranges.iter().filter(|r| r.contains(Some(v))).count();
            assert_eq!(holders, 1, "{v} in exactly one of {ranges:?}");
        }
        let null_holders: Vec<usize> = (0..n).filter(|&i| ranges[i].contains(None)).collect();
        assert_eq!(null_holders, vec![0], "NULL only in the first range");
    }

    fn boundaries(ranges: &[KeyRange]) -> Vec<i64> {
        ranges.iter().skip(1).map(|r| r.lower.unwrap()).collect()
    }

    #[test]
    fn stride_tables() {
        let cases: Vec<(i64, i64, u32, Vec<i64>)> = vec![
            (0, 1000, 10, (1..10).map(|i| i * 100).collect()),
            (0, 10, 3, vec![4, 7]),
            (0, 10, 4, vec![3, 6, 8]),
            (0, 10, 10, (1..10).collect()),
            (0, 3, 10, vec![1, 2]),
            (-5, -4, 5, vec![]),
            (0, 1000, 1, vec![]),
            (-10, 10, 2, vec![0]),
            (1, 2, 1, vec![]),
            (i64::MIN, i64::MAX, 1, vec![]),
            (i64::MIN, i64::MAX, 2, vec![0]),
            (
                i64::MIN,
                i64::MAX,
                4,
                vec![-4_611_686_018_427_387_904, 0, 4_611_686_018_427_387_904],
            ),
            (i64::MAX - 1, i64::MAX, 7, vec![]),
            (i64::MIN, i64::MIN + 3, 7, vec![i64::MIN + 1, i64::MIN + 2]),
        ];
        for (lower, upper, count, want) in cases {
            let ranges = stride_ranges(lower, upper, count);
            assert_eq!(
                boundaries(&ranges),
                want,
                "stride_ranges({lower}, {upper}, {count})"
            );
            check_split(lower, upper, count, &[]);
        }
        for count in [1, 2, 3, 7, 10, 64, 1000, 65_537] {
            check_split(i64::MIN, i64::MAX, count, &[]);
            check_split(i64::MIN, i64::MIN + 1000, count, &[]);
            check_split(i64::MAX - 999, i64::MAX, count, &[]);
        }
    }

    #[test]
    fn single_range_is_everything() {
        assert_eq!(
            stride_ranges(0, 1000, 1),
            vec![KeyRange {
                lower: None,
                upper: None
            }]
        );
        assert_eq!(stride_ranges(7, 8, 100), stride_ranges(0, 1000, 1));
    }

    #[test]
    #[should_panic(expected = "requires lower < upper")]
    fn equal_bounds_panic() {
        let _ = stride_ranges(5, 5, 2);
    }

    #[test]
    #[should_panic(expected = "requires lower < upper")]
    fn reversed_bounds_panic() {
        let _ = stride_ranges(6, 5, 2);
    }

    #[test]
    #[should_panic(expected = "requires count >= 1")]
    fn zero_count_panics() {
        let _ = stride_ranges(0, 10, 0);
    }

    #[test]
    fn date_split_over_days() {
        let lower = KeyType::Date.parse_bound("2021-02-20").unwrap();
        let upper = KeyType::Date.parse_bound("2021-02-28").unwrap();
        let ranges = stride_ranges(lower, upper, 4);
        let described: Vec<String> = ranges.iter().map(|r| r.describe(KeyType::Date)).collect();
        assert_eq!(
            described,
            [
                "< 2021-02-22 or NULL",
                "[2021-02-22, 2021-02-24)",
                "[2021-02-24, 2021-02-26)",
                ">= 2021-02-26"
            ]
        );
        assert_eq!(
            predicate("\"day\"", KeyType::Date, &ranges[1]).unwrap(),
            "(\"day\" >= '2021-02-22'::date AND \"day\" < '2021-02-24'::date)"
        );
    }

    #[test]
    fn predicates_and_descriptions() {
        let c = "\"c\"";
        let cases = [
            (
                KeyRange {
                    lower: None,
                    upper: Some(10),
                },
                Some("(\"c\" < '10'::int4 OR \"c\" IS NULL)"),
                "< 10 or NULL",
            ),
            (
                KeyRange {
                    lower: Some(10),
                    upper: Some(20),
                },
                Some("(\"c\" >= '10'::int4 AND \"c\" < '20'::int4)"),
                "[10, 20)",
            ),
            (
                KeyRange {
                    lower: Some(90),
                    upper: None,
                },
                Some("\"c\" >= '90'::int4"),
                ">= 90",
            ),
            (
                KeyRange {
                    lower: None,
                    upper: None,
                },
                None,
                "all rows",
            ),
            (
                KeyRange {
                    lower: Some(-20),
                    upper: Some(-10),
                },
                Some("(\"c\" >= '-20'::int4 AND \"c\" < '-10'::int4)"),
                "[-20, -10)",
            ),
        ];
        for (range, want, described) in cases {
            assert_eq!(
                predicate(c, KeyType::Int4, &range).as_deref(),
                want,
                "{range:?}"
            );
            assert_eq!(range.describe(KeyType::Int4), described, "{range:?}");
        }
        let tz = KeyRange {
            lower: Some(ts(18_678, 13, 45, 0, 0)),
            upper: None,
        };
        assert_eq!(
            predicate("\"at\"", KeyType::Timestamptz, &tz).unwrap(),
            "\"at\" >= '2021-02-20 13:45:00+00'::timestamptz"
        );
        assert_eq!(
            tz.describe(KeyType::Timestamptz),
            ">= 2021-02-20 13:45:00+00"
        );
    }

    #[test]
    fn range_membership() {
        let first = KeyRange {
            lower: None,
            upper: Some(0),
        };
        let middle = KeyRange {
            lower: Some(0),
            upper: Some(2),
        };
        let last = KeyRange {
            lower: Some(2),
            upper: None,
        };
        assert!(first.contains(None) && first.contains(Some(-1)) && !first.contains(Some(0)));
        assert!(!middle.contains(None) && middle.contains(Some(0)) && middle.contains(Some(1)));
        assert!(!middle.contains(Some(2)) && !last.contains(None) && last.contains(Some(2)));
    }

    #[test]
    fn key_range_serializes_bounds() {
        let json = serde_json::to_string(&KeyRange {
            lower: None,
            upper: Some(5),
        })
        .unwrap();
        assert_eq!(json, r#"{"lower":null,"upper":5}"#);
    }

    /// `YYYY-MM-DD` with a year of four or more digits.
    fn is_date_shape(text: &str) -> bool {
        let parts: Vec<&str> = text.split('-').collect();
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        parts.len() == 3
            && parts[0].len() >= 4
            && digits(parts[0])
            && parts[1].len() == 2
            && digits(parts[1])
            && parts[2].len() == 2
            && digits(parts[2])
    }

    /// Checks the documented literal shape, returning what is inside the quotes.
    fn literal_content(key: KeyType, value: i64) -> String {
        let literal = key.literal(value);
        let suffix = format!("'::{}", key.sql_name());
        let content = literal
            .strip_prefix('\'')
            .and_then(|l| l.strip_suffix(suffix.as_str()))
            .unwrap_or_else(|| panic!("{literal:?} is '...'::{}", key.sql_name()));
        assert!(!content.contains('\''), "{literal:?}");
        let (body, bc) = match content.strip_suffix(" BC") {
            Some(body) => (body, true),
            None => (content, false),
        };
        let ok = match key {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                !bc && content.parse::<i64>() == Ok(value)
            }
            KeyType::Date => is_date_shape(body),
            KeyType::Timestamp | KeyType::Timestamptz => {
                let body = if key == KeyType::Timestamptz {
                    body.strip_suffix("+00").unwrap_or("?")
                } else {
                    body
                };
                let (date, time) = body.split_once(' ').unwrap_or(("?", "?"));
                let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
                let hms_ok = hms.len() == 8
                    && hms.bytes().enumerate().all(|(i, b)| {
                        if i == 2 || i == 5 {
                            b == b':'
                        } else {
                            b.is_ascii_digit()
                        }
                    });
                let fraction_ok = !time.contains('.')
                    || ((1..=6).contains(&fraction.len())
                        && fraction.bytes().all(|b| b.is_ascii_digit())
                        && !fraction.ends_with('0'));
                is_date_shape(date) && hms_ok && fraction_ok
            }
        };
        assert!(ok, "{literal:?} has the documented shape");
        assert_eq!(content, key.display(value));
        content.to_string()
    }

    fn date_value() -> impl Strategy<Value = i64> {
        prop_oneof![
            DATE_MIN..=DATE_MAX,
            -800_000_i64..800_000,
            DATE_MIN..DATE_MIN + 1000,
            DATE_MAX - 1000..=DATE_MAX,
        ]
    }

    fn timestamp_value() -> impl Strategy<Value = i64> {
        prop_oneof![
            TIMESTAMP_MIN..=TIMESTAMP_MAX,
            -100_000_000_000_000_000_i64..100_000_000_000_000_000,
            TIMESTAMP_MIN..TIMESTAMP_MIN + 100_000_000_000,
            TIMESTAMP_MAX - 100_000_000_000..=TIMESTAMP_MAX,
            (DATE_MIN..=DATE_MAX / 20_000).prop_map(|d| d * MICROS_PER_DAY),
        ]
    }

    /// Bounds with `lower < upper`: arbitrary, narrow, and at the i64 edges.
    fn bounds() -> impl Strategy<Value = (i64, i64)> {
        let edge = prop_oneof![
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(i64::MAX - 1),
            Just(i64::MAX),
            -3_i64..3
        ];
        prop_oneof![
            (any::<i64>(), any::<i64>()),
            (any::<i64>(), 1_i64..2_000)
                .prop_map(|(l, w)| (l.min(i64::MAX - w), l.min(i64::MAX - w) + w)),
            (edge.clone(), edge),
        ]
        .prop_filter_map("lower < upper", |(a, b)| {
            (a != b).then(|| (a.min(b), a.max(b)))
        })
    }

    proptest! {
        #[test]
        fn integer_splits_partition_every_value(
            (lower, upper) in bounds(),
            count in 1_u32..=1000,
            probes in proptest::collection::vec(any::<i64>(), 8),
            near in -2_000_i64..2_000,
        ) {
            let mut extra = probes;
            extra.push(lower.saturating_add(near));
            extra.push(upper.saturating_add(near));
            check_split(lower, upper, count, &extra);
        }

        #[test]
        fn integer_bounds_round_trip(key in prop_oneof![Just(KeyType::Int2), Just(KeyType::Int4), Just(KeyType::Int8)], v in any::<i64>()) {
            let (min, max) = key.domain();
            let v = v.clamp(min, max);
            let content = literal_content(key, v);
            prop_assert_eq!(key.parse_bound(&content), Ok(v));
        }

        #[test]
        fn dates_round_trip(v in date_value()) {
            let content = literal_content(KeyType::Date, v);
            prop_assert_eq!(KeyType::Date.parse_bound(&content), Ok(v));
            let (year, month, day) = civil_from_days(v);
            prop_assert_eq!(days_from_civil(year, month, day), v);
            prop_assert!((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month));
            // The next day is the next calendar date.
            let (ny, nm, nd) = civil_from_days(v + 1);
            let expected = if day < days_in_month(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
            prop_assert_eq!((ny, nm, nd), expected);
        }

        #[test]
        fn dates_agree_with_chrono(v in -96_000_000_i64..95_000_000) {
            use chrono::Datelike;
            let ce = i32::try_from(v + 719_163).unwrap();
            let date = chrono::NaiveDate::from_num_days_from_ce_opt(ce).unwrap();
            let month = i64::from(date.month());
            let day = i64::from(date.day());
            prop_assert_eq!(civil_from_days(v), (i64::from(date.year()), month, day));
        }

        #[test]
        fn timestamps_round_trip(v in timestamp_value(), tz in any::<bool>()) {
            let key = if tz { KeyType::Timestamptz } else { KeyType::Timestamp };
            let content = literal_content(key, v);
            prop_assert_eq!(key.parse_bound(&content), Ok(v));
        }

        #[test]
        fn timestamptz_offsets_shift_to_utc(
            v in timestamp_value(),
            hours in 0_i64..=15,
            minutes in 0_i64..=59,
            negative in any::<bool>(),
            style in 0_u8..4,
        ) {
            let sign = if negative { -1 } else { 1 };
            let offset_micros = sign * (hours * 3600 + minutes * 60) * MICROS_PER_SECOND;
            // Written as local time, which must itself be a representable timestamp.
            let Some(local) = v.checked_add(offset_micros) else { return Ok(()) };
            let shown = KeyType::Timestamp.display(local);
            let (body, era) = match shown.strip_suffix(" BC") {
                Some(body) => (body, " BC"),
                None => (shown.as_str(), ""),
            };
            let sign_char = if negative { '-' } else { '+' };
            let offset = match style {
                0 => format!("{sign_char}{hours:02}:{minutes:02}"),
                1 => format!("{sign_char}{hours:02}{minutes:02}"),
                2 if minutes == 0 => format!(" {sign_char}{hours:02}"),
                _ if offset_micros == 0 => "Z".to_string(),
                _ => format!(" {sign_char}{hours:02}:{minutes:02}"),
            };
            let text = format!("{body}{offset}{era}");
            prop_assert_eq!(KeyType::Timestamptz.parse_bound(&text), Ok(v), "{}", text);
        }

        #[test]
        fn out_of_domain_dates_are_rejected(v in prop_oneof![DATE_MIN - 100_000..DATE_MIN, DATE_MAX + 1..DATE_MAX + 100_000]) {
            let text = KeyType::Date.display(v);
            let err = KeyType::Date.parse_bound(&text).unwrap_err();
            prop_assert!(err.contains("out of range for date"), "{}", err);
        }

        #[test]
        fn parse_bound_never_panics(key in prop_oneof![Just(KeyType::Int4), Just(KeyType::Date), Just(KeyType::Timestamp), Just(KeyType::Timestamptz)], text in "\\PC{0,40}") {
            let _ = key.parse_bound(&text);
        }

        #[test]
        fn parse_bound_never_panics_on_near_misses(key in prop_oneof![Just(KeyType::Date), Just(KeyType::Timestamp), Just(KeyType::Timestamptz)], text in "[0-9]{1,10}-[0-9]{1,3}-[0-9]{1,3}([ T][0-9]{1,3}:[0-9]{1,3}(:[0-9]{1,3}(\\.[0-9]{0,8})?)?([+-][0-9]{1,5}|Z)?)?( BC| bc)?") {
            let _ = key.parse_bound(&text);
        }
    }

    #[test]
    fn ranges_between_boundaries() {
        assert_eq!(
            ranges_between(&[10, 20]),
            vec![
                KeyRange {
                    lower: None,
                    upper: Some(10)
                },
                KeyRange {
                    lower: Some(10),
                    upper: Some(20)
                },
                KeyRange {
                    lower: Some(20),
                    upper: None
                },
            ]
        );
        assert_eq!(
            ranges_between(&[]),
            vec![KeyRange {
                lower: None,
                upper: None
            }]
        );
    }

    #[test]
    fn weighted_cuts_by_example() {
        let unit = |values: &[i64]| values.iter().map(|&v| (v, 1.0)).collect::<Vec<_>>();
        // Ten distinct values in two parts: five each.
        assert_eq!(
            weighted_cuts(&unit(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 0.0, 2),
            vec![6]
        );
        // One value holding most rows cannot be split: fewer parts.
        assert_eq!(
            weighted_cuts(&unit(&[1, 5, 5, 5, 5, 5, 5, 5, 5, 9]), 0.0, 4),
            vec![5, 9]
        );
        // NULLs count in the first part: with half the weight NULL, the first
        // value already starts the second half.
        assert_eq!(weighted_cuts(&unit(&[1, 2, 3, 4]), 4.0, 2), vec![1]);
        assert_eq!(weighted_cuts(&unit(&[1, 2, 3]), 0.0, 1), Vec::<i64>::new());
        assert_eq!(weighted_cuts(&[], 3.0, 4), Vec::<i64>::new());
    }

    #[test]
    fn block_ranges() {
        let r = |lower, upper| KeyRange { lower, upper };
        assert_eq!(
            block_predicate(&r(None, Some(5))).unwrap(),
            "ctid < '(5,0)'::tid"
        );
        assert_eq!(
            block_predicate(&r(Some(5), Some(9))).unwrap(),
            "(ctid >= '(5,0)'::tid AND ctid < '(9,0)'::tid)"
        );
        assert_eq!(
            block_predicate(&r(Some(9), None)).unwrap(),
            "ctid >= '(9,0)'::tid"
        );
        assert_eq!(block_predicate(&r(None, None)), None);
        assert_eq!(describe_blocks(&r(Some(5), Some(9))), "blocks [5, 9)");
        assert_eq!(describe_blocks(&r(None, Some(5))), "blocks < 5");
    }

    proptest! {
        /// Boundaries ascend, are values of the sample, make at most `count`
        /// parts, and with distinct values of equal weight give parts whose sizes
        /// differ by at most one row.
        #[test]
        fn weighted_cuts_split_evenly(
            mut values in proptest::collection::vec(-1000i64..1000, 0..300),
            count in 1u32..20,
            distinct in any::<bool>(),
        ) {
            values.sort_unstable();
            if distinct {
                values.dedup();
            }
            let points: Vec<(i64, f64)> = values.iter().map(|&v| (v, 1.0)).collect();
            let cuts = weighted_cuts(&points, 0.0, count);
            prop_assert!(cuts.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(cuts.iter().all(|c| values.contains(c)));
            prop_assert!(cuts.len() < count.max(1) as usize);
            let ranges = ranges_between(&cuts);
            let sizes: Vec<usize> = ranges
                .iter()
                .map(|r| values.iter().filter(|&&v| r.contains(Some(v))).count())
                .collect();
            prop_assert_eq!(sizes.iter().sum::<usize>(), values.len());
            if distinct && values.len() >= count as usize {
                prop_assert_eq!(ranges.len(), count as usize);
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                prop_assert!(max - min <= 1, "{:?}", sizes);
            }
        }
    }
}
