//! Host side: one stderr line of a plugin read with go-plugin v1.8.0's `logStderr` rules (§13):
//! hclog JSON, `[LEVEL]` prefixes, Go's `time.Parse` for `@timestamp`, panic mode.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone};
use serde_json::{Map, Value};
use tracing::Level;

/// One stderr line of a plugin as a Go host (go-plugin v1.8.0 `logStderr`) understands it.
#[derive(Debug, Clone, PartialEq)]
pub enum LogLine {
    /// A JSON object (or `null`) that go-plugin's `parseJSON` accepts.
    Json {
        /// `@level` when it names trace/debug/info/warn/error; `None` (an unknown, missing or
        /// `off` level) makes a Go host log the raw line at Debug.
        level: Option<Level>,
        /// `@message`, empty when missing.
        message: String,
        /// `@timestamp`; an offset of ±24:xx, which Go accepts and chrono cannot hold, is
        /// converted to UTC.
        timestamp: Option<DateTime<FixedOffset>>,
        /// Every other key, `@module` and `@caller` included.
        fields: Vec<(String, Value)>,
        /// The line as read.
        raw: String,
    },
    /// Anything else, kept verbatim (a `[LEVEL]` prefix included).
    Plain {
        /// From a `[TRACE]`..`[ERROR]` prefix, Error for a `panic: `/`fatal error: ` line (and,
        /// through [`StderrLogParser`], the lines after it); `None` means Debug.
        level: Option<Level>,
        /// The line, verbatim.
        text: String,
    },
}

impl LogLine {
    /// A fragment of an over-long line: a Go host logs it verbatim at Debug, never parses it and
    /// does not let it change panic mode.
    pub fn fragment(text: &str) -> Self {
        LogLine::Plain {
            level: Some(Level::DEBUG),
            text: text.to_string(),
        }
    }

    /// The level a Go host logs this line at.
    pub fn level(&self) -> Level {
        match self {
            LogLine::Json { level, .. } | LogLine::Plain { level, .. } => {
                level.unwrap_or(Level::DEBUG)
            }
        }
    }

    /// The text a Go host logs: the message of a leveled JSON line, otherwise the line itself.
    pub fn text(&self) -> &str {
        match self {
            LogLine::Json {
                level: Some(_),
                message,
                ..
            } => message,
            LogLine::Json { raw, .. } => raw,
            LogLine::Plain { text, .. } => text,
        }
    }
}

/// Parses one stderr line (without its line ending) by go-plugin's host rules, statelessly.
///
/// Where a Go host would crash (a non-string `@message`, `@level` or `@timestamp`: an unchecked
/// type assertion in `parseJSON`), the line is treated as plain text instead.
pub fn parse_line(line: &str) -> LogLine {
    parse_json_line(line).unwrap_or_else(|| parse_plain_line(line))
}

fn parse_json_line(line: &str) -> Option<LogLine> {
    // Go unmarshals into a map: objects are accepted, and so is `null` (a nil map).
    let mut map = match serde_json::from_str::<Value>(line).ok()? {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return None,
    };
    let message = take_string(&mut map, "@message")?.unwrap_or_default();
    let level_name = take_string(&mut map, "@level")?.unwrap_or_default();
    let timestamp = match take_string(&mut map, "@timestamp")? {
        Some(text) => Some(parse_hclog_timestamp(&text)?),
        None => None,
    };
    Some(LogLine::Json {
        level: level_from_hclog(&level_name),
        message,
        timestamp,
        fields: map.into_iter().collect(),
        raw: line.to_string(),
    })
}

/// `Some(None)` when `key` is absent, `None` when its value is not a string.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<Option<String>> {
    match map.remove(key) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    }
}

/// hclog's `LevelFromString`: trimmed, case-insensitive; `off` and unknown names are no level.
fn level_from_hclog(name: &str) -> Option<Level> {
    // Go lowercases with the simple (one-rune) mapping: İ becomes i, not i + U+0307.
    let lower: String = name
        .trim()
        .chars()
        .filter_map(|c| c.to_lowercase().next())
        .collect();
    match lower.as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "error" => Some(Level::ERROR),
        _ => None,
    }
}

const LEVEL_PREFIXES: [(&str, Level); 5] = [
    ("[TRACE]", Level::TRACE),
    ("[DEBUG]", Level::DEBUG),
    ("[INFO]", Level::INFO),
    ("[WARN]", Level::WARN),
    ("[ERROR]", Level::ERROR),
];

fn starts_panic(text: &str) -> bool {
    text.starts_with("panic: ") || text.starts_with("fatal error: ")
}

fn parse_plain_line(line: &str) -> LogLine {
    let level = LEVEL_PREFIXES
        .iter()
        .find(|(prefix, _)| line.starts_with(prefix))
        .map(|(_, level)| *level)
        .or_else(|| starts_panic(line).then_some(Level::ERROR));
    LogLine::Plain {
        level,
        text: line.to_string(),
    }
}

/// Parses a Go `time.Parse("2006-01-02T15:04:05.000000Z07:00", s)` would accept, with its quirks:
/// one-digit hours, `,` as the fraction separator, a signed fraction (`.+12345`), zone offsets up
/// to 24:60; seconds below 60, real calendar days.
pub(crate) fn parse_hclog_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    let (year, rest) = fixed_digits(b, 4)?;
    let rest = literal(rest, b'-')?;
    let (month, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b'-')?;
    let (day, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b'T')?;
    let (hour, rest) = one_or_two_digits(rest)?;
    let rest = literal(rest, b':')?;
    let (minute, rest) = fixed_digits(rest, 2)?;
    let rest = literal(rest, b':')?;
    let (second, rest) = fixed_digits(rest, 2)?;
    let (nanos, rest) = go_fraction(rest)?;
    let (offset_seconds, rest) = go_colon_zone(rest)?;
    if !rest.is_empty() || !(1..=12).contains(&month) || hour >= 24 || minute >= 60 || second >= 60
    {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let utc = naive.checked_sub_signed(chrono::Duration::seconds(i64::from(offset_seconds)))?;
    let offset = FixedOffset::east_opt(offset_seconds).unwrap_or(FixedOffset::east_opt(0)?);
    Some(offset.from_utc_datetime(&utc))
}

fn literal(b: &[u8], want: u8) -> Option<&[u8]> {
    match b.split_first() {
        Some((&c, rest)) if c == want => Some(rest),
        _ => None,
    }
}

fn fixed_digits(b: &[u8], n: usize) -> Option<(u32, &[u8])> {
    if b.len() < n || !b[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = b[..n]
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    Some((value, &b[n..]))
}

/// Go's `15` takes one digit when a second one does not follow.
fn one_or_two_digits(b: &[u8]) -> Option<(u32, &[u8])> {
    match b {
        [d0, d1, ..] if d0.is_ascii_digit() && d1.is_ascii_digit() => fixed_digits(b, 2),
        [d0, ..] if d0.is_ascii_digit() => fixed_digits(b, 1),
        _ => None,
    }
}

/// `.000000`: a `.` or `,` then six characters Go's `atoi` reads as a non-negative number
/// (an optional sign and digits), scaled as six digits.
fn go_fraction(b: &[u8]) -> Option<(u32, &[u8])> {
    let (&separator, rest) = b.split_first()?;
    if !matches!(separator, b'.' | b',') || rest.len() < 6 {
        return None;
    }
    let (field, rest) = rest.split_at(6);
    let (negative, digits) = match field.split_first() {
        Some((b'+', digits)) => (false, digits),
        Some((b'-', digits)) => (true, digits),
        _ => (false, field),
    };
    let (value, _) = fixed_digits(digits, digits.len())?;
    if negative && value != 0 {
        return None;
    }
    Some((value * 1_000, rest))
}

/// `Z07:00`: `Z`, or a sign, two digits, `:`, two digits, hours up to 24 and minutes up to 60.
fn go_colon_zone(b: &[u8]) -> Option<(i32, &[u8])> {
    if let Some(rest) = literal(b, b'Z') {
        return Some((0, rest));
    }
    if b.len() < 6 || b[3] != b':' {
        return None;
    }
    let (hours, _) = fixed_digits(&b[1..3], 2)?;
    let (minutes, _) = fixed_digits(&b[4..6], 2)?;
    if hours > 24 || minutes > 60 {
        return None;
    }
    let magnitude = i32::try_from((hours * 60 + minutes) * 60).ok()?;
    let offset = match b[0] {
        b'+' => magnitude,
        b'-' => -magnitude,
        _ => return None,
    };
    Some((offset, &b[6..]))
}

/// [`parse_line`] plus go-plugin's panic mode (v1.7.0+): once a plain line starts with
/// `panic: ` or `fatal error: `, it and every later plain line without a `[LEVEL]` prefix are
/// Error; JSON lines keep their own level. One parser per plugin process.
///
/// Fragments of over-long lines must not go through [`StderrLogParser::parse`]: log them as
/// [`LogLine::fragment`].
#[derive(Debug, Default, Clone)]
pub struct StderrLogParser {
    in_panic: bool,
}

impl StderrLogParser {
    /// A parser that has seen no panic yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a `panic: `/`fatal error: ` line has been seen.
    #[cfg(test)]
    pub fn in_panic(&self) -> bool {
        self.in_panic
    }

    /// Parses one complete stderr line with go-plugin's rules; once a panic started, every
    /// later plain line without a `[LEVEL]` prefix is an Error.
    pub fn parse(&mut self, line: &str) -> LogLine {
        match parse_line(line) {
            LogLine::Plain { level, text } => {
                if starts_panic(&text) {
                    self.in_panic = true;
                }
                let level = match level {
                    None if self.in_panic => Some(Level::ERROR),
                    other => other,
                };
                LogLine::Plain { level, text }
            }
            json => json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    use tracing::Level;

    #[test]
    fn parses_minimal_conforming_hclog_line() {
        let line = r#"{"@level":"info","@message":"PrintKV called","@timestamp":"2026-01-02T03:04:05.123456Z","foo":"bar"}"#;
        let parsed = parse_line(line);
        let LogLine::Json {
            level,
            message,
            timestamp,
            fields,
            raw,
        } = &parsed
        else {
            panic!("not JSON: {parsed:?}")
        };
        assert_eq!(*level, Some(Level::INFO));
        assert_eq!(message, "PrintKV called");
        let ts = timestamp.expect("timestamp");
        assert_eq!(ts.to_rfc3339(), "2026-01-02T03:04:05.123456+00:00");
        assert_eq!(fields, &vec![("foo".to_string(), Value::from("bar"))]);
        assert_eq!(raw, line);
    }

    #[test]
    fn bracketed_level_prefix_sets_level_and_stays_in_text() {
        assert_eq!(
            parse_line("[WARN] test line 98765"),
            LogLine::Plain {
                level: Some(Level::WARN),
                text: "[WARN] test line 98765".into()
            }
        );
        assert_eq!(parse_line("[TRACE] x").level(), Level::TRACE);
        assert_eq!(parse_line("[DEBUG] x").level(), Level::DEBUG);
        assert_eq!(parse_line("[INFO] x").level(), Level::INFO);
        assert_eq!(parse_line("[ERROR] x").level(), Level::ERROR);
        assert_eq!(
            parse_line("[warn] lowercase is not a prefix").level(),
            Level::DEBUG
        );
    }

    #[test]
    fn json_that_is_not_an_object_is_plain_debug_verbatim() {
        for line in [r#"["HELLO"]"#, "12345", "\"str\"", "true", "{not json"] {
            assert_eq!(
                parse_line(line),
                LogLine::Plain {
                    level: None,
                    text: line.into()
                },
                "{line}"
            );
        }
    }

    #[test]
    fn object_without_level_is_raw_line_at_debug() {
        let parsed = parse_line(r#"{"a":1}"#);
        assert!(matches!(parsed, LogLine::Json { level: None, .. }));
        assert_eq!(parsed.level(), Level::DEBUG);
        assert_eq!(parsed.text(), r#"{"a":1}"#);
        // Go unmarshals `null` into a nil map without error: the JSON path, no level.
        assert!(matches!(
            parse_line("null"),
            LogLine::Json { level: None, .. }
        ));
    }

    #[test]
    fn unknown_or_off_level_is_raw_line_at_debug() {
        for level in ["verbose", "off", "", "fatal"] {
            let line = format!(r#"{{"@level":"{level}","@message":"m"}}"#);
            let parsed = parse_line(&line);
            assert!(
                matches!(parsed, LogLine::Json { level: None, .. }),
                "{line}"
            );
            assert_eq!(parsed.level(), Level::DEBUG);
            assert_eq!(parsed.text(), line);
        }
    }

    #[test]
    fn level_is_trimmed_and_case_insensitive() {
        assert_eq!(
            parse_line(r#"{"@level":" WARN ","@message":"m"}"#).level(),
            Level::WARN
        );
        assert_eq!(
            parse_line(r#"{"@level":"Error","@message":"m"}"#).level(),
            Level::ERROR
        );
        assert_eq!(
            parse_line(r#"{"@level":"\u0130NFO","@message":"m"}"#).level(),
            Level::INFO
        );
    }

    #[test]
    fn bad_timestamp_makes_line_plain() {
        for ts in [
            "2026-01-02T03:04:05.12345Z",
            "2026-01-02T03:04:05.1234567Z",
            "2026-01-02T03:04:05Z",
            "2026-01-02 03:04:05.123456Z",
            "2026-01-02T03:04:05.123456+0100",
            "2026-01-02T03:04:05.123456",
            "2026-01-02T03:04:05.123456Zjunk",
            "2026-02-29T03:04:05.123456Z",
            "2026-13-02T03:04:05.123456Z",
            "2026-01-02T24:04:05.123456Z",
            "2026-01-02T03:04:60.123456Z",
            "2026-01-02T03:04:05.-12345Z",
            "2026-01-02T03:04:05.123456+25:00",
            "2026-1-02T03:04:05.123456Z",
        ] {
            let line = format!(r#"{{"@level":"info","@message":"m","@timestamp":"{ts}"}}"#);
            assert!(
                matches!(parse_line(&line), LogLine::Plain { level: None, .. }),
                "{ts} should be rejected"
            );
        }
    }

    #[test]
    fn timestamp_accepts_what_go_time_parse_accepts() {
        let cases = [
            (
                "2026-01-02T03:04:05.123456+05:30",
                "2026-01-02T03:04:05.123456+05:30",
            ),
            (
                "2026-01-02T03:04:05,123456Z",
                "2026-01-02T03:04:05.123456+00:00",
            ),
            (
                "2026-01-02T3:04:05.123456Z",
                "2026-01-02T03:04:05.123456+00:00",
            ),
            (
                "2026-01-02T03:04:05.+12345Z",
                "2026-01-02T03:04:05.012345+00:00",
            ),
            ("2026-01-02T03:04:05.-00000Z", "2026-01-02T03:04:05+00:00"),
            (
                "2024-02-29T03:04:05.000001-08:00",
                "2024-02-29T03:04:05.000001-08:00",
            ),
            // Go allows ±24:xx; chrono cannot hold it, so the instant is kept in UTC.
            (
                "2026-01-02T03:04:05.000000+24:00",
                "2026-01-01T03:04:05+00:00",
            ),
        ];
        for (input, want) in cases {
            let got = parse_hclog_timestamp(input).unwrap_or_else(|| panic!("{input} rejected"));
            assert_eq!(got.to_rfc3339(), want, "{input}");
        }
    }

    #[test]
    fn non_string_reserved_values_are_plain_not_a_crash() {
        // Each of these crashes a Go host (unchecked type assertion in parseJSON).
        for line in [
            r#"{"@level":"info","@message":42}"#,
            r#"{"@level":"info","@message":null}"#,
            r#"{"@level":["info"],"@message":"m"}"#,
            r#"{"@level":"info","@message":"m","@timestamp":1767322245}"#,
        ] {
            assert_eq!(
                parse_line(line),
                LogLine::Plain {
                    level: None,
                    text: line.into()
                }
            );
        }
    }

    #[test]
    fn panic_mode_makes_following_plain_lines_error() {
        let mut parser = StderrLogParser::new();
        let info =
            r#"{"@level":"info","@message":"before","@timestamp":"2026-01-02T03:04:05.123456Z"}"#;
        let script: [(&str, Level); 8] = [
            ("plain before", Level::DEBUG),
            (info, Level::INFO),
            ("panic: boom", Level::ERROR),
            ("", Level::ERROR),
            ("goroutine 1 [running]:", Level::ERROR),
            ("[INFO] prefixed lines keep their level", Level::INFO),
            (
                r#"{"@level":"debug","@message":"json keeps its level"}"#,
                Level::DEBUG,
            ),
            ("\tmain.go:12 +0x1d", Level::ERROR),
        ];
        for (line, want) in script {
            assert_eq!(parser.parse(line).level(), want, "{line:?}");
        }
        assert!(parser.in_panic());

        let mut fatal = StderrLogParser::new();
        assert_eq!(
            fatal
                .parse("fatal error: all goroutines are asleep")
                .level(),
            Level::ERROR
        );
        assert_eq!(fatal.parse("more").level(), Level::ERROR);
        assert!(!StderrLogParser::new().in_panic());
    }

    #[test]
    fn fragments_are_debug_verbatim() {
        assert_eq!(
            LogLine::fragment("{\"@level\":\"error\"").level(),
            Level::DEBUG
        );
        assert_eq!(LogLine::fragment("abc").text(), "abc");
    }
}
