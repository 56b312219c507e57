//! Schedules in config: the defaults, environment overrides, and bad values stopping start-up
//! with the schedule named.

use baseaim_worker::config::Config;
use baseaim_worker::jobs;
use baseaim_worker::schedule::{self, CatchUp};

fn load(pairs: &[(&str, &str)]) -> Result<Config, String> {
    let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_from(None, env).map_err(|e| e.to_string())
}

#[test]
fn the_defaults_declare_the_three_schedules_and_a_node_can_start_with_them() {
    let config = load(&[]).unwrap();
    let names: Vec<&str> = config.schedules.keys().map(String::as_str).collect();
    assert_eq!(names, ["facebook_sync", "prune", "stripe_reconcile"]);
    let facebook = &config.schedules["facebook_sync"];
    assert_eq!(facebook.cron, "*/30 * * * *");
    assert_eq!(facebook.kind, "facebook_sync");
    assert_eq!(facebook.catch_up, CatchUp::Latest);
    // The Facebook integration registered `facebook_sync`.
    assert!(facebook.enabled);
    // The Stripe integration registered `stripe_reconcile`.
    assert!(config.schedules["stripe_reconcile"].enabled);
    assert!(config.schedules["prune"].enabled);
    // What `serve` checks before starting: every enabled schedule's kind is runnable.
    let schedules = schedule::from_config(&config.schedules, &jobs::registry()).unwrap();
    let prune = schedules.iter().find(|s| s.name == "prune").unwrap();
    assert_eq!(prune.kind, "prune");
    assert_eq!(
        prune.max_attempts, 3,
        "the kind's policy applies to its ticks"
    );
}

#[test]
fn environment_variables_override_a_schedule() {
    let config = load(&[
        ("BAW__SCHEDULES__FACEBOOK_SYNC__CRON", "*/15 * * * *"),
        ("BAW__SCHEDULES__FACEBOOK_SYNC__TIMEZONE", "Europe/Berlin"),
        ("BAW__SCHEDULES__PRUNE__ENABLED", "false"),
        ("BAW__SCHEDULES__PRUNE__CATCH_UP", "skip"),
    ])
    .unwrap();
    assert_eq!(config.schedules["facebook_sync"].cron, "*/15 * * * *");
    assert_eq!(config.schedules["facebook_sync"].timezone, "Europe/Berlin");
    assert!(!config.schedules["prune"].enabled);
    assert_eq!(config.schedules["prune"].catch_up, CatchUp::Skip);
}

#[test]
fn an_invalid_cron_stops_start_up_naming_the_schedule() {
    let error = load(&[("BAW__SCHEDULES__PRUNE__CRON", "61 * * * *")]).unwrap_err();
    assert!(error.contains("`schedules.prune.cron`"), "{error}");
    assert!(error.contains("61 * * * *"), "{error}");
    // Even a disabled schedule must parse: enabling it later must not be what breaks start-up.
    let error = load(&[("BAW__SCHEDULES__STRIPE_RECONCILE__CRON", "every day")]).unwrap_err();
    assert!(
        error.contains("`schedules.stripe_reconcile.cron`"),
        "{error}"
    );
    // One that can never fire (30 February).
    let error = load(&[("BAW__SCHEDULES__PRUNE__CRON", "0 0 30 2 *")]).unwrap_err();
    assert!(error.contains("`schedules.prune.cron`"), "{error}");
}

#[test]
fn an_unknown_time_zone_stops_start_up_naming_the_schedule() {
    let error = load(&[("BAW__SCHEDULES__PRUNE__TIMEZONE", "Mars/Olympus_Mons")]).unwrap_err();
    assert!(error.contains("`schedules.prune.timezone`"), "{error}");
    assert!(error.contains("Mars/Olympus_Mons"), "{error}");
}

#[test]
fn a_seconds_field_is_optional() {
    let config = load(&[("BAW__SCHEDULES__PRUNE__CRON", "*/10 * * * * *")]).unwrap();
    let schedules = schedule::from_config(&config.schedules, &jobs::registry()).unwrap();
    let prune = schedules.iter().find(|s| s.name == "prune").unwrap();
    let t = super::at("2025-06-01T12:00:05Z");
    assert_eq!(prune.next_after(t), Some(super::at("2025-06-01T12:00:10Z")));
}

#[test]
fn enabling_a_schedule_whose_kind_does_not_exist_is_refused_naming_both() {
    let config = load(&[("BAW__SCHEDULES__FACEBOOK_SYNC__KIND", "no_such_kind")]).unwrap();
    let error = schedule::from_config(&config.schedules, &jobs::registry())
        .unwrap_err()
        .to_string();
    assert!(error.contains("schedule `facebook_sync`"), "{error}");
    assert!(error.contains("kind `no_such_kind`"), "{error}");
}

/// Why `serve` would refuse to start with `config` (the schedules' check against the kinds).
fn start_up_error(config: &Config) -> String {
    match schedule::from_config(&config.schedules, &jobs::registry()) {
        Ok(_) => panic!("the schedules passed the start-up check"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn args_the_kind_does_not_accept_stop_start_up_naming_the_schedule_s_args() {
    // `olderthan` for `older_than`: every tick's job would be discarded.
    let config = load(&[("BAW__SCHEDULES__PRUNE__ARGS__OLDERTHAN", "30d")]).unwrap();
    let error = start_up_error(&config);
    assert!(error.contains("`schedules.prune.args`"), "{error}");
    assert!(error.contains("olderthan"), "{error}");
    // Disabled, too: enabling it later must not be what breaks start-up.
    let config = load(&[
        ("BAW__SCHEDULES__PRUNE__ARGS__OLDER_THAN", "thirty days"),
        ("BAW__SCHEDULES__PRUNE__ENABLED", "false"),
    ])
    .unwrap();
    let error = start_up_error(&config);
    assert!(error.contains("`schedules.prune.args`"), "{error}");
    // Args the kind takes still load.
    let config = load(&[("BAW__SCHEDULES__PRUNE__ARGS__OLDER_THAN", "30d")]).unwrap();
    schedule::from_config(&config.schedules, &jobs::registry()).unwrap();
}

#[test]
fn a_nul_in_a_schedule_s_args_stops_loading_the_config() {
    // PostgreSQL's jsonb refuses \u0000: every tick would fail to enqueue.
    for (key, value) in [
        ("BAW__SCHEDULES__FACEBOOK_SYNC__ARGS__NOTE", "a\0b"),
        ("BAW__SCHEDULES__FACEBOOK_SYNC__ARGS__A\0B", "x"),
    ] {
        let error = load(&[(key, value)]).unwrap_err();
        assert!(error.contains("`schedules.facebook_sync.args`"), "{error}");
    }
}

#[test]
fn a_schedule_queue_no_node_works_is_refused_naming_the_key_and_the_queues() {
    let config = load(&[("BAW__SCHEDULES__PRUNE__QUEUE", "reprots")]).unwrap();
    let error = match schedule::load(&config, &jobs::registry()) {
        Ok(_) => panic!("a queue outside [queues] passed"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("`schedules.prune.queue`"), "{error}");
    assert!(error.contains("`reprots`"), "{error}");
    assert!(error.contains("default, drive, email, facebook"), "{error}");
    // A kind's own queue counts too: `facebook_sync` runs on `facebook`.
    let config = load(&[("BAW__QUEUES__FACEBOOK__CONCURRENCY", "1")]).unwrap();
    let mut without_facebook = config.clone();
    without_facebook.queues.remove("facebook");
    let error = match schedule::load(&without_facebook, &jobs::registry()) {
        Ok(_) => panic!("a kind's queue outside [queues] passed"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("`schedules.facebook_sync.queue`"), "{error}");
    // The shipped config loads, with a configured queue that exists as well.
    schedule::load(&config, &jobs::registry()).unwrap();
    let config = load(&[("BAW__SCHEDULES__PRUNE__QUEUE", "email")]).unwrap();
    schedule::load(&config, &jobs::registry()).unwrap();
}

#[test]
fn a_schedule_name_too_long_for_its_jobs_keys_stops_loading_the_config() {
    let named = |name: &str| {
        let prefix = format!("BAW__SCHEDULES__{}", name.to_uppercase());
        load(&[
            (&format!("{prefix}__CRON"), "0 * * * *"),
            (&format!("{prefix}__KIND"), "prune"),
        ])
    };
    let longest = "a".repeat(schedule::MAX_NAME);
    let config = named(&longest).unwrap();
    let schedules = schedule::from_config(&config.schedules, &jobs::registry()).unwrap();
    let s = schedules.iter().find(|s| s.name == longest).unwrap();
    // Its tick keys fit, with room for a run by hand's `schedule:<name>:manual:<32 hex>`.
    let tick = s.tick_key(super::at("2025-06-01T12:00:00Z"));
    assert!(
        tick.len() <= 512 - "manual:".len() - 32 + 20,
        "{}",
        tick.len()
    );
    assert_eq!(
        format!("schedule:{longest}:manual:{}", "0".repeat(32)).len(),
        512
    );
    let error = named(&"a".repeat(schedule::MAX_NAME + 1)).unwrap_err();
    assert!(error.contains("`schedules.aaaa"), "{error}");
    assert!(
        error.contains(&format!("at most {}", schedule::MAX_NAME)),
        "{error}"
    );
}
