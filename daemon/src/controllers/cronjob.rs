//! CronJob: creates a Job named `<cronjob>-<scheduled unix minutes>` at each scheduled time
//! (deterministic, so a new leader never starts a run twice). Standard 5-field schedules and the
//! @-macros, `timeZone` (and `CRON_TZ=`/`TZ=` prefixes), concurrencyPolicy Allow/Forbid/Replace,
//! startingDeadlineSeconds, suspend and the history limits. After downtime (of the whole
//! cluster: `status.lastScheduleTime` is in the store) only the most recent missed run is
//! started, if it is still within startingDeadlineSeconds; more than 100 missed runs also raise a
//! `TooManyMissedTimes` warning, as Kubernetes' controller does.
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "cronjob-controller";
const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "CronJob",
        primary: k.cronjobs.clone(),
        watches: vec![
            Watch { res: k.cronjobs.clone(), map: Mapper::Itself },
            Watch { res: k.jobs.clone(), map: Mapper::Owner("CronJob") },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// A parsed 5-field schedule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    doms: Vec<bool>,
    months: Vec<bool>,
    dows: Vec<bool>,
    dom_star: bool,
    dow_star: bool,
    pub tz: Option<String>,
}

fn field_value(s: &str, names: &[&str], name_base: u32) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let up = s.to_ascii_uppercase();
    names.iter().position(|n| *n == up).map(|p| p as u32 + name_base)
}

fn parse_field(f: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Option<(Vec<bool>, bool)> {
    let mut set = vec![false; (max + 1) as usize];
    let star = f == "*" || f == "?";
    for item in f.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (field_value(a, names, name_base)?, field_value(b, names, name_base)?)
        } else {
            let v = field_value(range, names, name_base)?;
            (v, if step > 1 { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return None;
        }
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            v += step;
        }
    }
    Some((set, star))
}

impl Schedule {
    pub(crate) fn parse(spec: &str, time_zone: Option<&str>) -> Option<Schedule> {
        let mut s = spec.trim();
        let mut tz = time_zone.map(str::to_string);
        for p in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = s.strip_prefix(p) {
                let (z, r) = rest.split_once(' ')?;
                tz = Some(z.to_string());
                s = r.trim();
            }
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return None;
        }
        const MONTHS: &[&str] = &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
        const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        let (minutes, _) = parse_field(f[0], 0, 59, &[], 0)?;
        let (hours, _) = parse_field(f[1], 0, 23, &[], 0)?;
        let (doms, dom_star) = parse_field(f[2], 1, 31, &[], 0)?;
        let (months, _) = parse_field(f[3], 1, 12, MONTHS, 1)?;
        let (mut dows, dow_star) = parse_field(f[4], 0, 7, DAYS, 0)?;
        if dows[7] {
            dows[0] = true;
        }
        if let Some(z) = &tz {
            jiff::tz::TimeZone::get(z).ok()?;
        }
        Some(Schedule { minutes, hours, doms, months, dows, dom_star, dow_star, tz })
    }

    fn zone(&self) -> jiff::tz::TimeZone {
        self.tz.as_deref().and_then(|z| jiff::tz::TimeZone::get(z).ok()).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    fn day_matches(&self, d: jiff::civil::Date) -> bool {
        let dom = self.doms[d.day() as usize];
        let dow = self.dows[d.weekday().to_sunday_zero_offset() as usize];
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `t`.
    pub(crate) fn next_after(&self, t: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let tz = self.zone();
        let start = t.to_zoned(tz.clone()).datetime();
        let mut dt =
            start.with().second(0).subsec_nanosecond(0).build().ok()?.checked_add(jiff::Span::new().minutes(1)).ok()?;
        for _ in 0..200_000 {
            if !self.months[dt.month() as usize] {
                dt = dt
                    .first_of_month()
                    .checked_add(jiff::Span::new().months(1))
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(dt.date()) {
                dt = dt.checked_add(jiff::Span::new().days(1)).ok()?.with().hour(0).minute(0).build().ok()?;
                continue;
            }
            if !self.hours[dt.hour() as usize] {
                dt = dt.checked_add(jiff::Span::new().hours(1)).ok()?.with().minute(0).build().ok()?;
                continue;
            }
            if !self.minutes[dt.minute() as usize] {
                dt = dt.checked_add(jiff::Span::new().minutes(1)).ok()?;
                continue;
            }
            let ts = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
            if ts > t {
                return Some(ts);
            }
            dt = dt.checked_add(jiff::Span::new().minutes(1)).ok()?;
        }
        None
    }
}

/// How many scheduled times lie in (`earliest`, `now`] (counted up to 101) and the latest one.
pub(crate) fn missed_runs(
    schedule: &Schedule,
    earliest: jiff::Timestamp,
    now: jiff::Timestamp,
) -> (u32, Option<jiff::Timestamp>) {
    let mut missed = 0;
    let mut latest = None;
    let mut t = earliest;
    while let Some(n) = schedule.next_after(t) {
        if n > now {
            return (missed, latest);
        }
        missed += 1;
        latest = Some(n);
        t = n;
        if missed > 100 {
            break;
        }
    }
    // Many missed: find the latest without walking through all of them, from ever wider
    // windows before `now`.
    for days in [0i64, 1, 32, 367, 2930] {
        let window =
            if days == 0 { jiff::SignedDuration::from_hours(1) } else { jiff::SignedDuration::from_hours(24 * days) };
        let from = now.checked_sub(window).unwrap_or(t).max(t);
        let mut x = from;
        let mut last = None;
        while let Some(n) = schedule.next_after(x) {
            if n > now {
                break;
            }
            last = Some(n);
            x = n;
        }
        if last.is_some() {
            return (missed, last);
        }
    }
    (missed, latest)
}

fn job_finished(job: &Value) -> Option<(&str, Option<jiff::Timestamp>)> {
    job["status"]["conditions"].as_array()?.iter().find_map(|c| {
        let t = c["type"].as_str()?;
        ((t == "Complete" || t == "Failed") && c["status"].as_str() == Some("True"))
            .then(|| (t, parse_time(&job["status"]["completionTime"]).or_else(|| parse_time(&c["lastTransitionTime"]))))
    })
}

fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name_of(job),
        "namespace": namespace_of(job),
        "uid": uid_of(job),
        "resourceVersion": job["metadata"]["resourceVersion"],
    })
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(cj) = util::get(&ctx.objects, &k.cronjobs, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&cj) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(&cj).to_string();
    let jobs: Vec<Value> = util::list(&ctx.objects, &k.jobs, key.ns())
        .await?
        .into_iter()
        .filter(|j| controlled_by(j, &uid) && !is_deleting(j))
        .collect();
    let mut active: Vec<&Value> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();

    // History limits.
    let mut status = cj["status"].as_object().cloned().unwrap_or_default();
    for (kind, field, default) in
        [("Complete", "successfulJobsHistoryLimit", 3), ("Failed", "failedJobsHistoryLimit", 1)]
    {
        let limit = cj["spec"][field].as_i64().unwrap_or(default).max(0) as usize;
        let mut done: Vec<(&Value, Option<jiff::Timestamp>)> =
            jobs.iter().filter_map(|j| job_finished(j).filter(|(t, _)| *t == kind).map(|(_, at)| (j, at))).collect();
        if kind == "Complete" {
            if let Some(last) = done.iter().filter_map(|(_, at)| *at).max() {
                status.insert("lastSuccessfulTime".into(), json!(fmt_time(last)));
            }
        }
        if done.len() > limit {
            done.sort_by_key(|(j, at)| (*at, parse_time(&j["metadata"]["creationTimestamp"])));
            let n = done.len() - limit;
            for (j, _) in &done[..n] {
                util::delete_uid(&ctx.objects, &k.jobs, key.ns(), name_of(j), uid_of(j)).await?;
            }
        }
    }

    let schedule_str = cj["spec"]["schedule"].as_str().unwrap_or("");
    let Some(schedule) = Schedule::parse(schedule_str, cj["spec"]["timeZone"].as_str()) else {
        ctx.events
            .warning(COMPONENT, &cj, "UnparseableSchedule", &format!("unparseable schedule: {schedule_str:?}"))
            .await;
        write(&ctx, &cj, status, &active).await?;
        return Ok(Action::await_change());
    };
    let now_t = now();
    if cj["spec"]["suspend"].as_bool() == Some(true) {
        write(&ctx, &cj, status, &active).await?;
        return Ok(Action::await_change());
    }
    let mut earliest = parse_time(&cj["status"]["lastScheduleTime"])
        .or_else(|| parse_time(&cj["metadata"]["creationTimestamp"]))
        .unwrap_or(now_t);
    let deadline = cj["spec"]["startingDeadlineSeconds"].as_i64();
    if let Some(sds) = deadline {
        let floor = now_t.checked_sub(jiff::SignedDuration::from_secs(sds)).unwrap_or(now_t);
        if floor > earliest {
            earliest = floor;
        }
    }
    let (missed, latest) = missed_runs(&schedule, earliest, now_t);
    let next = schedule.next_after(now_t);
    let requeue =
        next.map(|n| Action::requeue(elapsed(now_t, n) + Duration::from_millis(100))).unwrap_or(Action::await_change());
    let Some(scheduled) = latest else {
        write(&ctx, &cj, status, &active).await?;
        return Ok(requeue);
    };
    if missed > 100 {
        ctx.events
            .warning(
                COMPONENT,
                &cj,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            )
            .await;
    }
    if let Some(sds) = deadline {
        if elapsed(scheduled, now_t) > Duration::from_secs(sds.max(0) as u64) {
            write(&ctx, &cj, status, &active).await?;
            return Ok(requeue);
        }
    }
    let minutes = scheduled.as_second() / 60;
    let job_name = format!("{}-{minutes}", key.name);
    if util::get(&ctx.objects, &k.jobs, key.ns(), &job_name).await?.is_some() {
        status.insert("lastScheduleTime".into(), json!(fmt_time(scheduled)));
        write(&ctx, &cj, status, &active).await?;
        return Ok(requeue);
    }
    match cj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow") {
        "Forbid" if !active.is_empty() => {
            // Try again until the deadline (or the next schedule) passes.
            write(&ctx, &cj, status, &active).await?;
            return Ok(requeue.min(Action::requeue(Duration::from_secs(10))));
        }
        "Replace" => {
            for j in &active {
                util::delete_uid(&ctx.objects, &k.jobs, key.ns(), name_of(j), uid_of(j)).await?;
                ctx.events.normal(COMPONENT, &cj, "SuccessfulDelete", &format!("Deleted job {}", name_of(j))).await;
            }
            active.clear();
        }
        _ => {}
    }
    let tmpl = &cj["spec"]["jobTemplate"];
    let mut meta = tmpl["metadata"].as_object().cloned().unwrap_or_default();
    meta.insert("name".into(), json!(job_name));
    meta.insert("ownerReferences".into(), json!([owner_ref(&cj)]));
    let mut ann = meta.get("annotations").and_then(|a| a.as_object()).cloned().unwrap_or_default();
    ann.insert(SCHEDULED.into(), json!(fmt_time(scheduled)));
    meta.insert("annotations".into(), Value::Object(ann));
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": tmpl["spec"]});
    let created = match ctx.objects.create(&k.jobs, key.ns(), job).await {
        Ok(j) => Some(j),
        Err(shoal_kube::Error::AlreadyExists { .. }) => None,
        Err(e) => return Err(write_err(&k.jobs, &job_name)(e)),
    };
    if let Some(j) = &created {
        ctx.events.normal(COMPONENT, &cj, "SuccessfulCreate", &format!("Created job {}", name_of(j))).await;
    }
    status.insert("lastScheduleTime".into(), json!(fmt_time(scheduled)));
    let mut all_active: Vec<&Value> = active;
    if let Some(j) = &created {
        all_active.push(j);
    }
    write(&ctx, &cj, status, &all_active).await?;
    Ok(requeue)
}

async fn write(ctx: &Context, cj: &Value, mut status: serde_json::Map<String, Value>, active: &[&Value]) -> Result<()> {
    if active.is_empty() {
        status.remove("active");
    } else {
        status.insert("active".into(), Value::Array(active.iter().map(|j| job_ref(j)).collect()));
    }
    util::write_status(&ctx.objects, &ctx.kinds.cronjobs, cj, Value::Object(status)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(s.next_after(ts("2026-01-01T10:03:10Z")), Some(ts("2026-01-01T10:05:00Z")));
        let s = Schedule::parse("@daily", None).unwrap();
        assert_eq!(s.next_after(ts("2026-01-01T10:03:10Z")), Some(ts("2026-01-02T00:00:00Z")));
        let s = Schedule::parse("30 9 * * MON-FRI", None).unwrap();
        // 2026-01-03 is a Saturday.
        assert_eq!(s.next_after(ts("2026-01-03T00:00:00Z")), Some(ts("2026-01-05T09:30:00Z")));
        let s = Schedule::parse("0 0 1 JAN *", None).unwrap();
        assert_eq!(s.next_after(ts("2026-03-01T00:00:00Z")), Some(ts("2027-01-01T00:00:00Z")));
        assert!(Schedule::parse("61 * * * *", None).is_none());
        assert!(Schedule::parse("* * *", None).is_none());
    }

    #[test]
    fn many_missed_runs_start_the_latest() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        // Down for three days: 864 runs missed; the latest is the one to start.
        let (n, latest) = missed_runs(&s, ts("2026-01-01T00:00:00Z"), ts("2026-01-04T10:03:00Z"));
        assert!(n > 100);
        assert_eq!(latest, Some(ts("2026-01-04T10:00:00Z")));
        let (n, latest) = missed_runs(&s, ts("2026-01-04T09:50:00Z"), ts("2026-01-04T10:03:00Z"));
        assert_eq!((n, latest), (2, Some(ts("2026-01-04T10:00:00Z"))));
        // A yearly schedule missed for 150 years still finds its last run.
        let s = Schedule::parse("@yearly", None).unwrap();
        let (n, latest) = missed_runs(&s, ts("1900-06-01T00:00:00Z"), ts("2050-06-01T00:00:00Z"));
        assert!(n > 100);
        assert_eq!(latest, Some(ts("2050-01-01T00:00:00Z")));
    }

    #[test]
    fn time_zones() {
        let s = Schedule::parse("0 9 * * *", Some("Asia/Seoul")).unwrap();
        assert_eq!(s.next_after(ts("2026-01-01T00:30:00Z")), Some(ts("2026-01-02T00:00:00Z")));
        let s = Schedule::parse("CRON_TZ=Asia/Seoul 0 9 * * *", None).unwrap();
        assert_eq!(s.tz.as_deref(), Some("Asia/Seoul"));
    }

    proptest::proptest! {
        /// The next time matches the schedule, and no matching minute lies before it.
        #[test]
        fn next_after_is_the_first_match(minute in 0u32..60, step in 1u32..12, dom in 1u32..29, secs in 0i64..4_000_000_000) {
            let expr = format!("{minute} */{step} {dom},15 * *");
            let s = Schedule::parse(&expr, None).unwrap();
            let t = jiff::Timestamp::from_second(secs).unwrap();
            let n = s.next_after(t).unwrap();
            proptest::prop_assert!(n > t);
            let matches = |ts: jiff::Timestamp| {
                let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
                dt.minute() as u32 == minute && (dt.hour() as u32).is_multiple_of(step) && (dt.day() as u32 == dom || dt.day() == 15)
            };
            proptest::prop_assert!(matches(n));
            // Minutes between t and n (at most ~31 days) never match.
            let mut probe = jiff::Timestamp::from_second((secs / 60 + 1) * 60).unwrap();
            while probe < n {
                proptest::prop_assert!(!matches(probe));
                probe = probe.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
            }
        }
    }
}
