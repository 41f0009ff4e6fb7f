//! Calendar dates of Unix times, in UTC, without a date crate: what playlists
//! (`EXT-X-PROGRAM-DATE-TIME`) and recording names print.

/// A UTC calendar time, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Civil {
    /// The calendar time of Unix seconds (Howard Hinnant's `civil_from_days`).
    pub fn of_unix_secs(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = (secs % 86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of Unix milliseconds (ISO 8601, as HLS wants it).
pub fn iso8601_ms(unix_ms: u64) -> String {
    let c = Civil::of_unix_secs(unix_ms / 1000);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        unix_ms % 1000
    )
}

/// `YYYYMMDDTHHMMSSZ` of Unix seconds (ISO 8601 basic format, safe in file names).
pub fn compact_utc(secs: u64) -> String {
    let c = Civil::of_unix_secs(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` of Unix seconds: an HTTP `Date` (RFC 9110, IMF-fixdate).
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::of_unix_secs(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        c.day,
        MONTHS[(c.month as usize).clamp(1, 12) - 1],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// [`http_date`] of now, formatted once per second per thread.
pub fn http_date_now() -> std::rc::Rc<str> {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, std::rc::Rc<str>)> = RefCell::new((u64::MAX, "".into()));
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, http_date(secs).into());
        }
        cache.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(compact_utc(1_796_688_000 + 3661), "20261208T010101Z");
        assert_eq!(compact_utc(4_102_444_799), "20991231T235959Z");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
