//! RBAC: Roles, ClusterRoles (aggregated ones filled from the ClusterRoles their selectors
//! pick), RoleBindings and ClusterRoleBindings, evaluated as kube-apiserver does. The
//! bindings are indexed by subject (user name, group name) with their rules resolved, and the
//! index is rebuilt by a watch task when anything under `rbac.authorization.k8s.io` changes
//! (not by the next request), so a decision looks at the few grants of the requester only.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};
use shoal_kube::selector::LabelSelector;
use shoal_kube::{Objects, Resource, UpdateMode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Attributes, UserInfo, MASTERS};

pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";

/// The shortest time between two index rebuilds of the watch task: a burst of RBAC writes (an
/// admin creating a thousand bindings) costs every node one rebuild a second, not one per
/// write; a request that finds the index stale meanwhile still rebuilds it itself.
const REFRESH_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// One rule of a Role or ClusterRole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

impl PolicyRule {
    pub fn from_json(v: &Value) -> Self {
        PolicyRule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() || (k == "apiGroups" && self.non_resource_urls.is_empty()) {
                o.insert(k.into(), json!(v));
            }
        }
        Value::Object(o)
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether this rule allows the request (kube-apiserver's `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if !self.verb_matches(&a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|prefix| a.path.starts_with(prefix))
            });
        }
        if !self.api_groups.iter().any(|g| g == "*" || *g == a.group) {
            return false;
        }
        let resource_ok = self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if a.subresource.is_empty() {
                return *r == a.resource;
            }
            r.split_once('/').is_some_and(|(res, sub)| sub == a.subresource && (res == a.resource || res == "*"))
        });
        resource_ok && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

fn rules_of_json(role: &Value) -> Vec<PolicyRule> {
    role["rules"].as_array().into_iter().flatten().map(PolicyRule::from_json).collect()
}

/// The outcome of an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the reason (which binding, as kube-apiserver words it).
    Allow(String),
    /// Refused, with the reason to append to the message (empty when none).
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// kube-apiserver's wording of a refusal: `pods "x" is forbidden: User "alice" cannot get
/// resource "pods" in API group "" in the namespace "default"`.
pub fn forbidden_message(user: &str, a: &Attributes, reason: &str) -> String {
    let inner = if !a.resource_request {
        format!("User {user:?} cannot {} path {:?}", a.verb, a.path)
    } else {
        let resource =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        if a.namespace.is_empty() {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                a.verb, a.group
            )
        } else {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                a.verb, a.group, a.namespace
            )
        }
    };
    let inner = if reason.is_empty() { inner } else { format!("{inner}: {reason}") };
    let qualified = match (a.resource.is_empty() || !a.resource_request, a.group.is_empty()) {
        (true, _) => String::new(),
        (false, true) => a.resource.clone(),
        (false, false) => format!("{}.{}", a.resource, a.group),
    };
    if qualified.is_empty() && (a.group.is_empty() || !a.resource_request) {
        format!("forbidden: {inner}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {inner}")
    } else {
        format!("{qualified} {:?} is forbidden: {inner}", a.name)
    }
}

/// The rules one binding grants, and where.
#[derive(Debug)]
struct Grant {
    /// None for a ClusterRoleBinding (everywhere); a RoleBinding's namespace otherwise.
    namespace: Option<String>,
    rules: Arc<Vec<PolicyRule>>,
    /// "RoleBinding \"b/ns\" of ClusterRole \"edit\"".
    source: Arc<str>,
}

/// Every binding, resolved and indexed by subject.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_user: HashMap<String, Vec<Arc<Grant>>>,
    by_group: HashMap<String, Vec<Arc<Grant>>>,
}

/// An aggregated ClusterRole's rules: the union of those of the ClusterRoles its selectors
/// pick (themselves aggregated, to any depth), in name order, without duplicates.
fn aggregate(name: &str, roles: &BTreeMap<String, Value>, seen: &mut Vec<String>) -> Vec<PolicyRule> {
    let Some(role) = roles.get(name) else { return Vec::new() };
    let Some(selectors) = role["aggregationRule"]["clusterRoleSelectors"].as_array() else {
        return rules_of_json(role);
    };
    seen.push(name.to_string());
    let mut out: Vec<PolicyRule> = Vec::new();
    let selectors: Vec<LabelSelector> = selectors.iter().filter_map(|s| LabelSelector::from_json(s).ok()).collect();
    for (other, o) in roles {
        if seen.contains(other) {
            continue;
        }
        if selectors.iter().any(|s| !s.is_empty() && s.matches(o["metadata"]["labels"].as_object())) {
            for r in aggregate(other, roles, seen) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    seen.pop();
    out
}

/// Every ClusterRole's effective rules (aggregation applied).
pub(crate) fn effective_cluster_roles(list: &[Value]) -> BTreeMap<String, Vec<PolicyRule>> {
    let roles: BTreeMap<String, Value> =
        list.iter().filter_map(|r| Some((r["metadata"]["name"].as_str()?.to_string(), r.clone()))).collect();
    roles.keys().map(|name| (name.clone(), aggregate(name, &roles, &mut Vec::new()))).collect()
}

impl Index {
    /// Builds the index from the four lists.
    pub(crate) fn build(
        roles: &[Value],
        cluster_roles: &[Value],
        bindings: &[Value],
        cluster_bindings: &[Value],
    ) -> Self {
        let cr: HashMap<String, Arc<Vec<PolicyRule>>> =
            effective_cluster_roles(cluster_roles).into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let r: HashMap<(String, String), Arc<Vec<PolicyRule>>> = roles
            .iter()
            .filter_map(|o| {
                let ns = o["metadata"]["namespace"].as_str()?.to_string();
                let name = o["metadata"]["name"].as_str()?.to_string();
                Some(((ns, name), Arc::new(rules_of_json(o))))
            })
            .collect();
        let mut idx = Index::default();
        for (b, cluster) in bindings.iter().map(|b| (b, false)).chain(cluster_bindings.iter().map(|b| (b, true))) {
            let name = b["metadata"]["name"].as_str().unwrap_or_default();
            let ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
            let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = match role_kind {
                "ClusterRole" => cr.get(role_name).cloned(),
                "Role" if !cluster => r.get(&(ns.to_string(), role_name.to_string())).cloned(),
                _ => None,
            };
            let Some(rules) = rules else {
                debug!(binding = %name, role = %role_name, "binding of a role that does not exist grants nothing");
                continue;
            };
            let source: Arc<str> = if cluster {
                format!("ClusterRoleBinding {name:?} of {role_kind} {role_name:?}").into()
            } else {
                format!("RoleBinding \"{name}/{ns}\" of {role_kind} {role_name:?}").into()
            };
            let grant = Arc::new(Grant { namespace: (!cluster).then(|| ns.to_string()), rules, source });
            for s in b["subjects"].as_array().into_iter().flatten() {
                let sname = s["name"].as_str().unwrap_or_default();
                match s["kind"].as_str().unwrap_or_default() {
                    "User" => idx.by_user.entry(sname.to_string()).or_default().push(grant.clone()),
                    "Group" => idx.by_group.entry(sname.to_string()).or_default().push(grant.clone()),
                    "ServiceAccount" => {
                        let sns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(ns);
                        idx.by_user
                            .entry(format!("system:serviceaccount:{sns}:{sname}"))
                            .or_default()
                            .push(grant.clone());
                    }
                    _ => {}
                }
            }
        }
        idx
    }

    fn grants<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = (&'a Arc<Grant>, &'a str)> + 'a {
        let users = self.by_user.get(&user.name).into_iter().flatten().map(move |g| (g, "User"));
        let groups =
            user.groups.iter().filter_map(move |grp| self.by_group.get(grp)).flatten().map(move |g| (g, "Group"));
        users.chain(groups)
    }

    /// The RBAC decision for a request.
    pub(crate) fn decide(&self, user: &UserInfo, a: &Attributes) -> Decision {
        for (g, kind) in self.grants(user) {
            let applies = match &g.namespace {
                None => true,
                Some(ns) => a.resource_request && *ns == a.namespace,
            };
            if applies && g.rules.iter().any(|r| r.allows(a)) {
                let subject = if kind == "User" { user.name.as_str() } else { "" };
                let subject = if subject.is_empty() {
                    // The first group of the user that the binding names.
                    user.groups
                        .iter()
                        .find(|grp| self.by_group.get(*grp).is_some_and(|v| v.iter().any(|x| Arc::ptr_eq(x, g))))
                        .map(|s| s.as_str())
                        .unwrap_or_default()
                } else {
                    subject
                };
                return Decision::Allow(format!("RBAC: allowed by {} to {kind} {subject:?}", g.source));
            }
        }
        Decision::Deny(String::new())
    }

    /// Every rule that applies to the user in a namespace ("" for cluster-wide only).
    pub(crate) fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        for (g, _) in self.grants(user) {
            if g.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                continue;
            }
            for r in g.rules.iter() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }
}

fn rbac_resource(plural: &str) -> Resource {
    shoal_kube::resources::lookup(GROUP, plural)
}

/// The RBAC authorizer of one API server: an index of the bindings, rebuilt when an RBAC
/// object changes (a watch on the local replica counts the changes; the index records the count
/// it was built at, so it is stale while the two differ).
pub struct Authorizer {
    objects: Objects,
    index: RwLock<Arc<Index>>,
    /// RBAC changes seen (watch events and re-watches); starts at 1 (nothing loaded yet).
    changes: AtomicU64,
    /// The value of `changes` the current index was built after.
    built: AtomicU64,
    rebuild: tokio::sync::Mutex<()>,
}

impl Authorizer {
    pub fn new(objects: Objects) -> Arc<Self> {
        Arc::new(Authorizer {
            objects,
            index: RwLock::new(Arc::new(Index::default())),
            changes: AtomicU64::new(1),
            built: AtomicU64::new(0),
            rebuild: tokio::sync::Mutex::new(()),
        })
    }

    /// Rebuilds the index whenever an RBAC object changes, until `shutdown`; and keeps
    /// aggregated ClusterRoles' stored `rules` filled. A watch that ended (it fell behind a
    /// burst of writes) is taken up again with a rebuild here, which no request waits for:
    /// nothing is known to have changed.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let prefix = format!("/{GROUP}/");
        loop {
            let mut rx = match self.objects.store().watch(&prefix, None).await {
                Ok(rx) => rx,
                Err(e) => {
                    debug!(error = %e, "rbac watch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            self.fill_aggregated().await;
            self.reload().await;
            let clusterroles = format!("/{GROUP}/clusterroles/");
            // Every event is counted at once (a request then finds the index stale and
            // rebuilds it itself); this task rebuilds at most once per REFRESH_GAP, so a burst
            // of writes is taken in a rebuild or two.
            let mut pending = false;
            let mut next = tokio::time::Instant::now();
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = rx.recv() => Some(ev),
                    _ = tokio::time::sleep_until(next), if pending => None,
                };
                match ev {
                    Some(Some(Ok(ev))) => {
                        self.changed();
                        if ev.kv.key.starts_with(&clusterroles) {
                            self.fill_aggregated().await;
                        }
                        pending = true;
                        if tokio::time::Instant::now() < next {
                            continue;
                        }
                    }
                    Some(_) => break,
                    None => {}
                }
                self.refresh().await;
                pending = false;
                next = tokio::time::Instant::now() + REFRESH_GAP;
            }
        }
    }

    /// Writes the computed rules into every aggregated ClusterRole whose stored rules differ
    /// (what kube-controller-manager's aggregation controller does).
    async fn fill_aggregated(&self) {
        let res = rbac_resource("clusterroles");
        let Ok((list, _)) = self.objects.list(&res, None).await else { return };
        let effective = effective_cluster_roles(&list);
        for role in list.iter().filter(|r| r["aggregationRule"].is_object()) {
            let Some(name) = role["metadata"]["name"].as_str() else { continue };
            let want: Vec<Value> = effective.get(name).into_iter().flatten().map(PolicyRule::to_json).collect();
            let have = rules_of_json(role);
            let want_rules: Vec<PolicyRule> = want.iter().map(PolicyRule::from_json).collect();
            if have == want_rules {
                continue;
            }
            let r = self
                .objects
                .modify(&res, None, name, UpdateMode::All, |o| {
                    o["rules"] = Value::Array(want.clone());
                    Ok(true)
                })
                .await;
            if let Err(e) = r {
                debug!(role = %name, error = %e, "aggregated clusterrole not updated");
            }
        }
    }

    /// Counts one RBAC change (the index is stale until rebuilt after it).
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    fn stale(&self) -> bool {
        self.built.load(Ordering::SeqCst) < self.changes.load(Ordering::SeqCst)
    }

    /// Rebuilds the index if an RBAC object changed since it was built. One rebuild at a time,
    /// and whoever found the index stale waits for a rebuild that started after the changes
    /// it saw: no request is decided on an index older than a change already seen.
    async fn refresh(&self) {
        if self.stale() {
            self.rebuild_index(false).await;
        }
    }

    /// Rebuilds the index even if no change was counted (a watch taken up again).
    async fn reload(&self) {
        self.rebuild_index(true).await;
    }

    async fn rebuild_index(&self, always: bool) {
        let _guard = self.rebuild.lock().await;
        let want = self.changes.load(Ordering::SeqCst);
        if !always && self.built.load(Ordering::SeqCst) >= want {
            return;
        }
        match self.load().await {
            Ok(idx) => {
                if let Ok(mut w) = self.index.write() {
                    *w = Arc::new(idx);
                }
                self.built.fetch_max(want, Ordering::SeqCst);
            }
            Err(e) => warn!(error = %e, "rbac objects cannot be read; keeping the previous index"),
        }
    }

    /// The index, rebuilt first if it is stale: the watch task rebuilds it as soon as an RBAC
    /// object changes, so a request only pays for a rebuild in the moment between a change
    /// and that rebuild (and then sees the change, as one right after the write must).
    async fn current(&self) -> Arc<Index> {
        self.refresh().await;
        self.index.read().map(|i| i.clone()).unwrap_or_default()
    }

    async fn load(&self) -> Result<Index, shoal_kube::Error> {
        let (roles, _) = self.objects.list(&rbac_resource("roles"), None).await?;
        let (cluster_roles, _) = self.objects.list(&rbac_resource("clusterroles"), None).await?;
        let (bindings, _) = self.objects.list(&rbac_resource("rolebindings"), None).await?;
        let (cluster_bindings, _) = self.objects.list(&rbac_resource("clusterrolebindings"), None).await?;
        Ok(Index::build(&roles, &cluster_roles, &bindings, &cluster_bindings))
    }

    /// Whether `user` may do what `a` describes. `system:masters` may do anything.
    pub async fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow(String::new());
        }
        let node = user.name.strip_prefix("system:node:").filter(|_| user.in_group(super::NODES));
        let node_reason = match node {
            Some(node) => match super::node::decide(&self.objects, node, a).await {
                Decision::Allow(r) => return Decision::Allow(r),
                Decision::Deny(reason) => reason,
            },
            None => String::new(),
        };
        match self.current().await.decide(user, a) {
            Decision::Deny(_) if !node_reason.is_empty() => Decision::Deny(node_reason),
            d => d,
        }
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
    pub async fn rules(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        self.current().await.rules_for(user, namespace)
    }
}

/// The rules of a Role or ClusterRole object (for escalation checks and reviews).
pub fn rules_of(role: &Value) -> Vec<PolicyRule> {
    rules_of_json(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, sub, ns, name)
    }

    #[test]
    fn rules_match_as_upstream() {
        let r = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}));
        assert!(r.allows(&res("get", "", "pods", "", "d", "x")));
        assert!(r.allows(&res("get", "", "pods", "log", "d", "x")));
        assert!(!r.allows(&res("get", "", "pods", "exec", "d", "x")));
        assert!(!r.allows(&res("delete", "", "pods", "", "d", "x")));
        assert!(!r.allows(&res("get", "apps", "pods", "", "d", "x")));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(star.allows(&res("deletecollection", "apps", "deployments", "scale", "", "")));
        assert!(!star.allows(&Attributes::non_resource("get", "/healthz")));
        let sub = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*/status"]}));
        assert!(sub.allows(&res("get", "", "nodes", "status", "", "n")));
        assert!(!sub.allows(&res("get", "", "nodes", "", "", "n")));
        let named = rule(
            json!({"verbs": ["get", "update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"]}),
        );
        assert!(named.allows(&res("get", "", "configmaps", "", "d", "cfg")));
        assert!(!named.allows(&res("get", "", "configmaps", "", "d", "other")));
        assert!(!named.allows(&res("list", "", "configmaps", "", "d", "")));
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*", "/metrics"]}));
        assert!(urls.allows(&Attributes::non_resource("get", "/healthz")));
        assert!(urls.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(urls.allows(&Attributes::non_resource("get", "/metrics")));
        assert!(!urls.allows(&Attributes::non_resource("get", "/api")));
        assert!(!urls.allows(&Attributes::non_resource("post", "/healthz")));
        assert!(!urls.allows(&res("get", "", "healthz", "", "", "")));
    }

    fn cr(name: &str, labels: Value, rules: Value, aggregation: Option<Value>) -> Value {
        let mut v = json!({"metadata": {"name": name, "labels": labels}, "rules": rules});
        if let Some(a) = aggregation {
            v["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": a}]});
        }
        v
    }

    #[test]
    fn aggregation_fills_rules_transitively() {
        let list = vec![
            cr("view", json!({"agg-edit": "true"}), json!(null), Some(json!({"agg-view": "true"}))),
            cr("edit", json!({}), json!(null), Some(json!({"agg-edit": "true"}))),
            cr(
                "v1",
                json!({"agg-view": "true"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
                None,
            ),
            cr(
                "e1",
                json!({"agg-edit": "true"}),
                json!([{"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}]),
                None,
            ),
            cr("loop", json!({"agg-edit": "true"}), json!(null), Some(json!({"agg-edit": "true"}))),
        ];
        let eff = effective_cluster_roles(&list);
        assert_eq!(eff["view"].len(), 1);
        let edit = &eff["edit"];
        assert!(edit.iter().any(|r| r.verbs == ["get"]) && edit.iter().any(|r| r.verbs == ["create"]), "{edit:?}");
        assert_eq!(edit.len(), 2);
    }

    fn binding(kind: &str, ns: Option<&str>, name: &str, role_kind: &str, role: &str, subjects: Value) -> Value {
        let mut v = json!({"metadata": {"name": name}, "roleRef": {"apiGroup": GROUP, "kind": role_kind, "name": role}, "subjects": subjects});
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = json!(ns);
        }
        let _ = kind;
        v
    }

    #[test]
    fn bindings_grant_to_their_subjects_where_they_apply() {
        let roles = vec![
            json!({"metadata": {"name": "reader", "namespace": "dev"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]}),
        ];
        let crs = vec![
            cr("edit", json!({}), json!([{"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments"]}]), None),
            cr("disc", json!({}), json!([{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}]), None),
        ];
        let rbs = vec![
            binding(
                "RoleBinding",
                Some("dev"),
                "alice-edit",
                "ClusterRole",
                "edit",
                json!([{"kind": "User", "name": "alice"}]),
            ),
            binding(
                "RoleBinding",
                Some("dev"),
                "sa-read",
                "Role",
                "reader",
                json!([{"kind": "ServiceAccount", "name": "default"}]),
            ),
            binding("RoleBinding", Some("dev"), "dangling", "Role", "nope", json!([{"kind": "User", "name": "alice"}])),
        ];
        let crbs = vec![binding(
            "ClusterRoleBinding",
            None,
            "disc",
            "ClusterRole",
            "disc",
            json!([{"kind": "Group", "name": "system:authenticated"}]),
        )];
        let idx = Index::build(&roles, &crs, &rbs, &crbs);
        let alice = UserInfo::new("alice", Vec::new());
        assert!(idx.decide(&alice, &res("create", "apps", "deployments", "", "dev", "")).allowed());
        assert!(!idx.decide(&alice, &res("create", "apps", "deployments", "", "prod", "")).allowed());
        assert!(!idx.decide(&alice, &res("list", "", "secrets", "", "dev", "")).allowed());
        assert!(idx.decide(&alice, &Attributes::non_resource("get", "/api/v1")).allowed());
        assert_eq!(
            idx.decide(&alice, &res("create", "apps", "deployments", "", "dev", "")),
            Decision::Allow(
                "RBAC: allowed by RoleBinding \"alice-edit/dev\" of ClusterRole \"edit\" to User \"alice\"".into()
            )
        );
        let sa = UserInfo::service_account("dev", "default");
        assert!(idx.decide(&sa, &res("get", "", "secrets", "", "dev", "s")).allowed());
        assert!(!idx.decide(&sa, &res("get", "", "secrets", "", "default", "s")).allowed());
        let other_sa = UserInfo::service_account("prod", "default");
        assert!(!idx.decide(&other_sa, &res("get", "", "secrets", "", "dev", "s")).allowed());
        assert_eq!(idx.rules_for(&alice, "dev").len(), 2);
        assert_eq!(idx.rules_for(&alice, "prod").len(), 1);
    }

    #[test]
    fn refusals_are_worded_as_kube_apiserver() {
        let m = |a: &Attributes| forbidden_message("alice", a, "");
        assert_eq!(
            m(&res("get", "", "pods", "", "default", "x")),
            r#"pods "x" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "default""#
        );
        assert_eq!(
            m(&res("list", "", "secrets", "", "default", "")),
            r#"secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "default""#
        );
        assert_eq!(
            m(&res("list", "", "nodes", "", "", "")),
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
        );
        assert_eq!(
            m(&res("create", "", "pods", "exec", "dev", "web")),
            r#"pods "web" is forbidden: User "alice" cannot create resource "pods/exec" in API group "" in the namespace "dev""#
        );
        assert_eq!(
            m(&res("get", "apps", "deployments", "scale", "dev", "web")),
            r#"deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments/scale" in API group "apps" in the namespace "dev""#
        );
        assert_eq!(
            m(&Attributes::non_resource("get", "/metrics")),
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    /// Decision time with 1,000 RoleBindings and 100 ClusterRoleBindings present, for a user
    /// bound through one RoleBinding (printed; `--no-capture` shows it).
    #[test]
    fn decision_time_with_a_thousand_bindings() {
        let crs = vec![cr(
            "edit",
            json!({}),
            json!([{"verbs": ["get", "list", "watch", "create", "update", "patch", "delete"], "apiGroups": ["", "apps", "batch"], "resources": ["pods", "deployments", "jobs", "configmaps", "secrets"]}]),
            None,
        )];
        let rbs: Vec<Value> = (0..1000)
            .map(|i| binding("RoleBinding", Some(&format!("ns{}", i % 50)), &format!("b{i}"), "ClusterRole", "edit", json!([{"kind": "User", "name": format!("user{i}")}, {"kind": "Group", "name": format!("team{}", i % 20)}])))
            .collect();
        let crbs: Vec<Value> = (0..100)
            .map(|i| {
                binding(
                    "ClusterRoleBinding",
                    None,
                    &format!("c{i}"),
                    "ClusterRole",
                    "edit",
                    json!([{"kind": "User", "name": format!("ops{i}")}]),
                )
            })
            .collect();
        let idx = Index::build(&[], &crs, &rbs, &crbs);
        let user = UserInfo::new("user7", vec!["team7".to_string(), "dev".to_string()]);
        let allowed = res("create", "apps", "deployments", "", "ns7", "");
        let denied = res("list", "", "secrets", "", "ns8", "");
        let mut times = Vec::with_capacity(20_000);
        for i in 0..20_000 {
            let a = if i % 2 == 0 { &allowed } else { &denied };
            let t = std::time::Instant::now();
            let d = idx.decide(&user, a);
            times.push(t.elapsed());
            assert_eq!(d.allowed(), i % 2 == 0);
        }
        times.sort();
        let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "authz_decision_p50_us={:.2} authz_decision_p99_us={:.2} (1000 RoleBindings, 100 ClusterRoleBindings)",
            p(0.5),
            p(0.99)
        );
    }

    /// The RBAC objects of the decision benches, written through the store: `edit`, 1,000
    /// RoleBindings (users and groups) and 100 ClusterRoleBindings.
    async fn write_thousand_bindings(objects: &Objects) {
        let edit = json!([{"verbs": ["get", "list", "watch", "create", "update", "patch", "delete"], "apiGroups": ["", "apps", "batch"], "resources": ["pods", "deployments", "jobs", "configmaps", "secrets"]}]);
        objects.create(&rbac_resource("clusterroles"), None, cr("edit", json!({}), edit, None)).await.unwrap();
        for i in 0..1000 {
            let ns = format!("ns{}", i % 50);
            let subjects = json!([{"kind": "User", "name": format!("user{i}")}, {"kind": "Group", "name": format!("team{}", i % 20)}]);
            let b = binding("RoleBinding", Some(&ns), &format!("b{i}"), "ClusterRole", "edit", subjects);
            objects.create(&rbac_resource("rolebindings"), Some(&ns), b).await.unwrap();
        }
        for i in 0..100 {
            let subjects = json!([{"kind": "User", "name": format!("ops{i}")}]);
            let b = binding("ClusterRoleBinding", None, &format!("c{i}"), "ClusterRole", "edit", subjects);
            objects.create(&rbac_resource("clusterrolebindings"), None, b).await.unwrap();
        }
    }

    /// Waits (up to 30 s) until `f` holds.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn indexed(authz: &Authorizer, user: &str) -> bool {
        !authz.stale() && authz.index.read().map(|i| i.by_user.contains_key(user)).unwrap_or(false)
    }

    /// A written binding reaches the index by the watch task alone, with no request paying for
    /// the rebuild; a deleted one leaves it the same way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_follows_rbac_changes_without_a_request() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let authz = Authorizer::new(objects.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(authz.clone().run(shutdown.clone()));
        write_thousand_bindings(&objects).await;
        eventually("user999 indexed by the watch task", || indexed(&authz, "user999")).await;
        eventually("ops99 indexed by the watch task", || indexed(&authz, "ops99")).await;
        objects.delete(&rbac_resource("rolebindings"), Some("ns49"), "b999", Default::default()).await.unwrap();
        eventually("user999 gone from the index", || {
            !authz.stale() && authz.index.read().map(|i| !i.by_user.contains_key("user999")).unwrap_or(false)
        })
        .await;
        let user = UserInfo::new("user999", vec![]);
        assert!(!authz.authorize(&user, &res("create", "apps", "deployments", "", "ns49", "")).await.allowed());
        // Right after a rebuild the task waits before the next one, but counts every change at
        // once: the first request after a write sees it.
        for i in 0..3 {
            let seen = authz.changes.load(Ordering::SeqCst);
            let name = format!("late{i}");
            let subjects = json!([{"kind": "User", "name": name}]);
            let b = binding("RoleBinding", Some("ns1"), &name, "ClusterRole", "edit", subjects);
            objects.create(&rbac_resource("rolebindings"), Some("ns1"), b).await.unwrap();
            eventually("the change counted", || authz.changes.load(Ordering::SeqCst) > seen).await;
            let late = UserInfo::new(name, vec![]);
            assert!(authz.authorize(&late, &res("create", "apps", "deployments", "", "ns1", "")).await.allowed());
        }
        shutdown.cancel();
    }

    /// Requests that arrive together after a change (here: the first ones, no watch task) are
    /// all decided on the index built after it; one of them rebuilding must not leave the
    /// others on the index from before (they were refused while it loaded).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_during_a_rebuild_wait_for_it() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        write_thousand_bindings(&objects).await;
        let authz = Authorizer::new(objects.clone());
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let authz = authz.clone();
                tokio::spawn(async move {
                    let user = UserInfo::new(format!("user{t}"), vec![]);
                    authz.authorize(&user, &res("create", "apps", "deployments", "", &format!("ns{t}"), "")).await
                })
            })
            .collect();
        for (t, d) in futures::future::join_all(tasks).await.into_iter().enumerate() {
            assert!(d.unwrap().allowed(), "user{t} was decided on the index from before its binding");
        }
        // A change counted later is waited for the same way.
        let b = binding(
            "RoleBinding",
            Some("ns1"),
            "late",
            "ClusterRole",
            "edit",
            json!([{"kind": "User", "name": "late"}]),
        );
        objects.create(&rbac_resource("rolebindings"), Some("ns1"), b).await.unwrap();
        authz.changed();
        let late = UserInfo::new("late", vec![]);
        assert!(authz.authorize(&late, &res("create", "apps", "deployments", "", "ns1", "")).await.allowed());
    }

    /// Decisions through the authorizer right after 1,000 RoleBindings and 100
    /// ClusterRoleBindings were written (once the watch task rebuilt the index, which no request
    /// waits for), from 4 tasks at once: the same as the index built from the same lists
    /// decides, and the time of each (printed: p99 and the worst).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decision_time_right_after_a_thousand_bindings_are_written() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let authz = Authorizer::new(objects.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(authz.clone().run(shutdown.clone()));
        write_thousand_bindings(&objects).await;
        // Every binding names a user of its own: 1,100 users indexed is every binding.
        eventually("the watch task indexed every binding", || {
            !authz.stale() && authz.index.read().map(|i| i.by_user.len() == 1100).unwrap_or(false)
        })
        .await;
        let mut lists = Vec::new();
        for r in ["roles", "clusterroles", "rolebindings", "clusterrolebindings"] {
            lists.push(objects.list(&rbac_resource(r), None).await.unwrap().0);
        }
        let reference = Arc::new(Index::build(&lists[0], &lists[1], &lists[2], &lists[3]));
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let (authz, reference) = (authz.clone(), reference.clone());
                tokio::spawn(async move {
                    let mut times = Vec::with_capacity(500);
                    for i in 0..500 {
                        let user =
                            UserInfo::new(format!("user{}", (i * 7 + t) % 1000), vec![format!("team{}", i % 20)]);
                        let a = match i % 4 {
                            0 => res("create", "apps", "deployments", "", &format!("ns{}", i % 50), ""),
                            1 => res("list", "", "secrets", "", "ns8", ""),
                            2 => res("delete", "", "pods", "", &format!("ns{}", (i * 7 + t) % 50), "p"),
                            _ => Attributes::non_resource("get", "/metrics"),
                        };
                        let started = std::time::Instant::now();
                        let d = authz.authorize(&user, &a).await;
                        times.push(started.elapsed());
                        assert_eq!(d, reference.decide(&user, &a), "{user:?} {a:?}");
                    }
                    times
                })
            })
            .collect();
        let mut times: Vec<std::time::Duration> =
            futures::future::join_all(tasks).await.into_iter().flat_map(|t| t.unwrap()).collect();
        times.sort();
        let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
        println!("authz_decision_after_write_p99_us: {:.2}", p(0.99));
        println!("authz_decision_after_write_max_us: {:.2}", times[times.len() - 1].as_secs_f64() * 1e6);
        shutdown.cancel();
    }
}
