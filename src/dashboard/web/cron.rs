//! Cron expressions in words for the schedules page: the common shapes (every N minutes, hourly,
//! daily, weekly, monthly at a time); anything else is shown as written.

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// `"*/30 * * * *"` → `every 30 minutes`; `"0 4 * * *"` → `every day at 04:00`. Six fields
/// (seconds first) are read with their seconds field only when it is `0`.
pub fn describe(expression: &str) -> String {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let fields: &[&str] = match fields.len() {
        5 => &fields,
        6 if fields[0] == "0" => &fields[1..],
        _ => return format!("cron {expression}"),
    };
    let (minute, hour, dom, month, dow) = (fields[0], fields[1], fields[2], fields[3], fields[4]);
    let number = |s: &str| s.parse::<u32>().ok();
    let every = |s: &str| s.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    let at = |h: u32, m: u32| format!("{h:02}:{m:02}");
    let any = |s: &str| s == "*";

    if !any(month) {
        return format!("cron {expression}");
    }
    let when = match (minute, hour) {
        ("*", "*") => Some("every minute".to_string()),
        (m, "*") if every(m).is_some() => every(m).map(|n| match n {
            1 => "every minute".to_string(),
            n => format!("every {n} minutes"),
        }),
        (m, "*") if number(m).is_some() => number(m).map(|m| format!("every hour at minute {m}")),
        (m, h) if number(m).is_some() && every(h).is_some() => {
            let (m, n) = (number(m).unwrap_or(0), every(h).unwrap_or(1));
            Some(format!("every {n} hours at minute {m}"))
        }
        (m, h) if number(m).is_some() && number(h).is_some() => {
            let (m, h) = (number(m).unwrap_or(0), number(h).unwrap_or(0));
            let time = at(h, m);
            return match (any(dom), any(dow)) {
                (true, true) => format!("every day at {time}"),
                (true, false) => match day_names(dow) {
                    Some(days) => format!("every {days} at {time}"),
                    None => format!("cron {expression}"),
                },
                (false, true) => match number(dom) {
                    Some(d) => format!("on day {d} of every month at {time}"),
                    None => format!("cron {expression}"),
                },
                (false, false) => format!("cron {expression}"),
            };
        }
        _ => None,
    };
    match when {
        Some(w) if any(dom) && any(dow) => w,
        _ => format!("cron {expression}"),
    }
}

/// `1-5` → `Monday to Friday`, `1,3` → `Monday and Wednesday`, `0` → `Sunday`.
fn day_names(dow: &str) -> Option<String> {
    let name = |s: &str| {
        let n: usize = s.parse().ok()?;
        DAYS.get(n % 7).copied()
    };
    if let Some((a, b)) = dow.split_once('-') {
        return Some(format!("{} to {}", name(a)?, name(b)?));
    }
    let names: Option<Vec<&str>> = dow.split(',').map(name).collect();
    let names = names?;
    Some(match names.as_slice() {
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
        [] => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn common_shapes_read_as_words() {
        assert_eq!(describe("*/30 * * * *"), "every 30 minutes");
        assert_eq!(describe("* * * * *"), "every minute");
        assert_eq!(describe("0 * * * *"), "every hour at minute 0");
        assert_eq!(describe("0 4 * * *"), "every day at 04:00");
        assert_eq!(describe("0 0 4 * * *"), "every day at 04:00");
        assert_eq!(describe("30 9 * * 1-5"), "every Monday to Friday at 09:30");
        assert_eq!(
            describe("0 8 * * 1,3"),
            "every Monday and Wednesday at 08:00"
        );
        assert_eq!(describe("15 6 1 * *"), "on day 1 of every month at 06:15");
        assert_eq!(describe("0 */6 * * *"), "every 6 hours at minute 0");
        assert_eq!(describe("0 4 * 1 *"), "cron 0 4 * 1 *");
        assert_eq!(describe("nonsense"), "cron nonsense");
    }
}
