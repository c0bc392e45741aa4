use super::*;

fn at(s: i64) -> jiff::Timestamp {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap_or_else(|e| panic!("{e}"));
    t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap_or_else(|e| panic!("{e}"))
}

fn want(holder: &str, members: &[(&str, &'static str)]) -> Want {
    let m: BTreeMap<String, &'static str> = members.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    Want { holder: holder.into(), members: members_value(&m) }
}

#[test]
fn members_are_listed_sorted_by_name_with_their_role() {
    let w = want("n1", &[("w", "witness"), ("n2", "voter"), ("n1", "voter"), ("n4", "learner")]);
    assert_eq!(w.members, "n1=voter,n2=voter,n4=learner,w=witness");
}

#[test]
fn writes_only_on_a_new_holder_a_change_of_members_or_when_due() {
    let three = want("n1", &[("n1", "voter"), ("n2", "voter"), ("n3", "voter")]);
    let mut l = json!({"metadata": {"name": NAME}, "spec": {}});
    assert!(apply(&mut l, &three, at(0)), "an empty lease is written");
    assert_eq!(l["spec"]["holderIdentity"], "n1");
    assert_eq!(l["spec"]["leaseDurationSeconds"], DURATION_S);
    assert_eq!(l["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(l["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(l["metadata"]["annotations"][MEMBERS], "n1=voter,n2=voter,n3=voter");

    // Nothing changed: no write until the renewal is due.
    for s in [1, 10, 45, 299] {
        assert!(!apply(&mut l, &three, at(s)), "no write at {s} s");
    }
    assert!(apply(&mut l, &three, at(300)), "renewed when 5 minutes old");
    assert_eq!(l["spec"]["renewTime"], "2026-01-01T00:05:00.000000Z");
    assert_eq!(l["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z", "the same holder keeps its acquireTime");

    // A change of members is written, but not sooner than MIN_GAP after the last write.
    let learner = want("n1", &[("n1", "voter"), ("n2", "voter"), ("n3", "learner")]);
    assert!(!apply(&mut l, &learner, at(305)), "members written at most once per {MIN_GAP:?}");
    assert!(apply(&mut l, &learner, at(310)));
    assert_eq!(l["metadata"]["annotations"][MEMBERS], "n1=voter,n2=voter,n3=learner");
    assert_eq!(l["spec"]["leaseTransitions"], json!(null), "no transition without a holder change");

    // A new leader writes at once, whatever the age, and counts a transition.
    let n2 = want("n2", &[("n1", "voter"), ("n2", "voter"), ("n3", "learner")]);
    assert!(apply(&mut l, &n2, at(311)));
    assert_eq!(l["spec"]["holderIdentity"], "n2");
    assert_eq!(l["spec"]["acquireTime"], "2026-01-01T00:05:11.000000Z");
    assert_eq!(l["spec"]["leaseTransitions"], 1);
}

#[test]
fn a_lease_with_a_bad_renew_time_or_a_foreign_holder_is_taken_over() {
    let w = want("n1", &[("n1", "voter")]);
    let mut l = json!({"metadata": {"name": NAME, "annotations": "not-an-object"},
        "spec": {"holderIdentity": "n1", "renewTime": "yesterday"}});
    assert!(apply(&mut l, &w, at(0)), "an unreadable renewTime is due");
    assert_eq!(l["metadata"]["annotations"][MEMBERS], "n1=voter");
    l["spec"]["holderIdentity"] = json!("intruder");
    assert!(apply(&mut l, &w, at(1)), "a holder that is not the leader is replaced at once");
    assert_eq!(l["spec"]["holderIdentity"], "n1");
}

#[tokio::test]
async fn the_lease_is_created_once_then_written_only_when_due() {
    let objects = Objects::new(shoal_store::Store::in_memory());
    let res = resources::lookup("coordination.k8s.io", "leases");
    let w = want("n1", &[("n1", "voter"), ("n2", "voter"), ("w", "witness")]);
    keep(&objects, &w).await.unwrap_or_else(|e| panic!("{e}"));
    let l = objects.get(&res, Some(NAMESPACE), NAME).await.unwrap_or_else(|e| panic!("{e}"));
    let l = l.unwrap_or_else(|| panic!("no lease"));
    assert_eq!(l["spec"]["holderIdentity"], "n1");
    assert_eq!(l["metadata"]["annotations"][MEMBERS], "n1=voter,n2=voter,w=witness");
    let rv = l["metadata"]["resourceVersion"].clone();
    keep(&objects, &w).await.unwrap_or_else(|e| panic!("{e}"));
    let again = objects.get(&res, Some(NAMESPACE), NAME).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        again.map(|l| l["metadata"]["resourceVersion"].clone()),
        Some(rv.clone()),
        "no write when nothing is due"
    );
    // Another leader takes it over at once.
    keep(&objects, &Want { holder: "n2".into(), ..w }).await.unwrap_or_else(|e| panic!("{e}"));
    let l = objects.get(&res, Some(NAMESPACE), NAME).await.unwrap_or_else(|e| panic!("{e}"));
    let l = l.unwrap_or_else(|| panic!("no lease"));
    assert_eq!(l["spec"]["holderIdentity"], "n2");
    assert_eq!(l["spec"]["leaseTransitions"], 1);
    assert_ne!(l["metadata"]["resourceVersion"], rv);
}
