use std::collections::BTreeMap;

use shoal_gossip::membership::Member;
use shoal_store::{MemberStatus, Role, StoreStatus};

use super::{refusal, workload_voters, StandRequest};
use crate::config::NodeRole;

fn status(leader: u64, term: u64, applied: u64, members: &[(u64, Role)]) -> StoreStatus {
    StoreStatus {
        node_id: 0,
        leader: Some(leader),
        term,
        applied_index: applied,
        revision: 0,
        members: members
            .iter()
            .map(|(id, role)| MemberStatus { node_id: *id, addr: format!("10.0.0.{id}:7443"), role: *role })
            .collect(),
    }
}

fn member(id: u64, alive: bool, role: Option<&str>) -> Member {
    let mut attrs = BTreeMap::from([("node_id".to_string(), id.to_string())]);
    if let Some(r) = role {
        attrs.insert("role".to_string(), r.to_string());
    }
    Member { name: format!("n{id}"), gossip_addr: "10.0.0.1:7946".parse().unwrap(), generation: 1, alive, attrs }
}

#[test]
fn a_witness_hands_over_only_to_live_workload_voters() {
    let st = status(3, 5, 10, &[(1, Role::Voter), (2, Role::Voter), (3, Role::Voter), (4, Role::Learner)]);
    // 3 is the witness; 1 is dead, 2 alive (an older node gossips no role: a worker), 4 a learner.
    let gossip = [
        member(1, false, Some("worker")),
        member(2, true, None),
        member(3, true, Some("witness")),
        member(4, true, None),
    ];
    let got = workload_voters(3, &st, &gossip);
    assert_eq!(got, vec![(2, "10.0.0.2:7443".parse().unwrap())]);
    // Another witness is never asked; a voter out of sight neither.
    let gossip = [member(1, true, Some("witness")), member(3, true, Some("witness"))];
    assert!(workload_voters(3, &st, &gossip).is_empty());
}

#[test]
fn only_a_caught_up_workload_voter_stands_and_only_when_the_leader_asks() {
    let st = status(3, 5, 10, &[(1, Role::Voter), (2, Role::Learner), (3, Role::Voter)]);
    let req = StandRequest { term: 5, applied_index: 10 };
    assert_eq!(refusal(1, NodeRole::Worker, &st, Some(3), &req), None);
    // Any other caller (a node that is not the leader, an unknown name) is refused.
    assert!(refusal(1, NodeRole::Worker, &st, Some(2), &req).unwrap().contains("only the current leader"));
    assert!(refusal(1, NodeRole::Worker, &st, None, &req).unwrap().contains("only the current leader"));
    // A witness never stands on request; a learner cannot.
    assert!(refusal(1, NodeRole::Witness, &st, Some(3), &req).unwrap().contains("witness"));
    assert!(refusal(2, NodeRole::Worker, &st, Some(3), &req).unwrap().contains("does not vote"));
    // Behind the leader's log, or another term: it would lose (or disrupt) the election.
    let behind = StandRequest { term: 5, applied_index: 11 };
    assert!(refusal(1, NodeRole::Worker, &st, Some(3), &behind).unwrap().starts_with("behind"));
    let stale = StandRequest { term: 4, applied_index: 1 };
    assert!(refusal(1, NodeRole::Worker, &st, Some(3), &stale).unwrap().contains("term"));
}
