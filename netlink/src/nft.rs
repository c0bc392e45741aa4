//! nftables: rulesets applied in one `nft -f -` transaction, and a small text builder.
//!
//! A table is replaced atomically with `table F N; delete table F N; table F N { ... }` in one
//! transaction: the kernel swaps the old table for the new one, so packets never see a moment
//! without rules. A table that an earlier transaction wrote can instead be updated in place, in
//! one transaction too, which keeps the elements of its dynamic sets ([`Table::update_text`]).
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{Error, Result};

/// Applies nftables rulesets. [`LinuxNft`] runs `nft`; [`FakeNft`] records them.
pub trait Nft: Send + Sync {
    /// Applies the ruleset as one transaction: all of it or none.
    fn apply(&self, ruleset: &str) -> Result<()>;
}

/// Runs `nft -f -` in the current network namespace.
pub fn apply(ruleset: &str) -> Result<()> {
    LinuxNft::default().apply(ruleset)
}

/// [`Nft`] through the `nft` binary, in the current network namespace or in the one at a
/// path (`/run/netns/NAME`, `/proc/PID/ns/net`).
#[derive(Debug, Clone, Default)]
pub struct LinuxNft {
    netns: Option<PathBuf>,
}

impl LinuxNft {
    pub fn new() -> LinuxNft {
        LinuxNft::default()
    }

    /// Applies rulesets inside the network namespace at `path`.
    pub fn in_netns(path: impl Into<PathBuf>) -> LinuxNft {
        LinuxNft { netns: Some(path.into()) }
    }

    fn run(&self, ruleset: &str, ns: Option<&Path>) -> Result<()> {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let ns_file = match ns {
            Some(p) => Some(std::fs::File::open(p).map_err(Error::SpawnNft)?),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // setns(2) syscall, which is async-signal-safe; it allocates nothing and takes no
            // lock. `fd` stays open until `spawn` returns because `ns_file` outlives it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(Error::SpawnNft)?;
        drop(ns_file);
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset.as_bytes()).map_err(Error::SpawnNft)?;
        }
        let out = child.wait_with_output().map_err(Error::SpawnNft)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::ApplyRuleset { stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
        }
    }
}

impl Nft for LinuxNft {
    fn apply(&self, ruleset: &str) -> Result<()> {
        self.run(ruleset, self.netns.as_deref())
    }
}

/// Records applied rulesets; can be told to fail.
#[derive(Debug, Default)]
pub struct FakeNft {
    applied: Mutex<Vec<String>>,
    fail: Mutex<Option<String>>,
}

impl FakeNft {
    pub fn new() -> FakeNft {
        FakeNft::default()
    }

    /// Every ruleset applied so far.
    pub fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes every later apply fail with this nft error (None: succeed again).
    pub fn fail_with(&self, stderr: Option<&str>) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = stderr.map(str::to_string);
    }
}

impl Nft for FakeNft {
    fn apply(&self, ruleset: &str) -> Result<()> {
        if let Some(stderr) = self.fail.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::ApplyRuleset { stderr });
        }
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).push(ruleset.to_string());
        Ok(())
    }
}

/// Text of one nftables table, written as a whole and applied in one transaction: either replacing
/// the table ([`Table::replace_text`]) or turning the table an earlier [`Table`] applied into this
/// one while keeping its sets' elements ([`Table::update_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    family: String,
    name: String,
    items: Vec<Item>,
}

/// A chain, set or map of the table, with its whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    name: String,
    /// `chain`, `set` or `map`: what `delete KEYWORD F N NAME` takes.
    keyword: String,
    text: String,
}

impl Item {
    fn is_chain(&self) -> bool {
        self.keyword == "chain"
    }
}

/// The hook a base chain attaches to.
#[derive(Debug, Clone, Copy)]
pub struct Hook<'a> {
    /// `filter`, `nat` or `route`.
    pub kind: &'a str,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: &'a str,
    /// A number or a named priority with offset (`dstnat`, `srcnat`, `filter - 1`).
    pub priority: &'a str,
}

fn chain_text<S: AsRef<str>>(name: &str, header: Option<String>, rules: &[S]) -> String {
    let mut s = format!("  chain {name} {{\n");
    if let Some(h) = header {
        s.push_str(&h);
    }
    for r in rules {
        s.push_str("    ");
        s.push_str(r.as_ref());
        s.push('\n');
    }
    s.push_str("  }\n");
    s
}

impl Table {
    /// A table of `family` (`ip`, `ip6`, `inet`) named `name`.
    pub fn new(family: &str, name: &str) -> Table {
        Table { family: family.into(), name: name.into(), items: Vec::new() }
    }

    /// A base chain with policy accept.
    pub fn base_chain<S: AsRef<str>>(&mut self, name: &str, hook: Hook<'_>, rules: &[S]) -> &mut Table {
        let header = format!("    type {} hook {} priority {}; policy accept;\n", hook.kind, hook.hook, hook.priority);
        let text = chain_text(name, Some(header), rules);
        self.items.push(Item { name: name.into(), keyword: "chain".into(), text });
        self
    }

    /// A regular chain, reached by jump/goto.
    pub fn chain<S: AsRef<str>>(&mut self, name: &str, rules: &[S]) -> &mut Table {
        let text = chain_text(name, None, rules);
        self.items.push(Item { name: name.into(), keyword: "chain".into(), text });
        self
    }

    /// A set or map; `body` is what goes between its braces (`type ...; flags ...;`).
    pub fn set(&mut self, keyword: &str, name: &str, body: &str) -> &mut Table {
        let text = format!("  {keyword} {name} {{\n    {body}\n  }}\n");
        self.items.push(Item { name: name.into(), keyword: keyword.into(), text });
        self
    }

    /// The table's definition alone.
    pub fn definition(&self) -> String {
        let mut s = format!("table {} {} {{\n", self.family, self.name);
        for i in &self.items {
            s.push_str(&i.text);
        }
        s.push_str("}\n");
        s
    }

    /// A transaction that replaces the table (creating it if missing) in one step.
    pub fn replace_text(&self) -> String {
        format!("{}\n{}", delete_text(&self.family, &self.name), self.definition())
    }

    /// A transaction that turns `applied`, the table as an earlier transaction left it, into this
    /// one without replacing the table. Only what changed is written: a chain whose rules changed
    /// is flushed and refilled, a new chain or set is declared, a set whose definition changed is
    /// deleted and declared again (empty), and chains and sets this table no longer has are
    /// deleted. Everything else is left as it is, so a dynamic set (ClientIP affinity) keeps its
    /// entries and a change to one Service costs a few lines, not the whole table. All in one
    /// transaction, as atomic as a replace.
    ///
    /// It is only right when the table in the kernel is still `applied`: after a failed apply, or
    /// at start, use [`Table::replace_text`].
    pub fn update_text(&self, applied: &Table) -> String {
        if applied.family != self.family || applied.name != self.name {
            return self.replace_text();
        }
        let (f, n) = (&self.family, &self.name);
        let before: std::collections::HashMap<&str, &Item> =
            applied.items.iter().map(|i| (i.name.as_str(), i)).collect();
        let now: std::collections::HashSet<&str> = self.items.iter().map(|i| i.name.as_str()).collect();
        // Sets that exist with another definition are deleted and declared again; every chain
        // that uses one is rewritten with it (a set in use cannot be deleted).
        let recreated: Vec<&Item> = self
            .items
            .iter()
            .filter(|i| !i.is_chain() && before.get(i.name.as_str()).is_some_and(|old| old != i))
            .collect();
        let uses_recreated = |chain: &Item| recreated.iter().any(|set| uses_set(&chain.text, &set.name));
        let mut flush = String::new();
        let mut block = String::new();
        for i in &self.items {
            match before.get(i.name.as_str()) {
                Some(old) if old == &i && !(i.is_chain() && uses_recreated(i)) => continue,
                Some(old) if old.is_chain() && i.is_chain() => {
                    flush.push_str(&format!("flush chain {f} {n} {}\n", i.name));
                }
                _ => {}
            }
            block.push_str(&i.text);
        }
        // Chains that go are emptied first: their rules may jump to each other or use a set
        // that goes too.
        let stale: Vec<&Item> = applied.items.iter().filter(|i| !now.contains(i.name.as_str())).collect();
        for i in stale.iter().filter(|i| i.is_chain()) {
            flush.push_str(&format!("flush chain {f} {n} {}\n", i.name));
        }
        let mut s = flush;
        for i in &recreated {
            s.push_str(&format!("delete {} {f} {n} {}\n", i.keyword, i.name));
        }
        if !block.is_empty() {
            s.push_str(&format!("table {f} {n} {{\n{block}}}\n"));
        }
        for i in stale.iter().filter(|i| i.is_chain()) {
            s.push_str(&format!("delete chain {f} {n} {}\n", i.name));
        }
        for i in stale.iter().filter(|i| !i.is_chain()) {
            s.push_str(&format!("delete {} {f} {n} {}\n", i.keyword, i.name));
        }
        s
    }
}

/// Whether nft rule text refers to the set `@name` (not to a longer name starting with it).
fn uses_set(text: &str, name: &str) -> bool {
    let needle = format!("@{name}");
    text.match_indices(&needle).any(|(at, _)| {
        text[at + needle.len()..].chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// A transaction that removes a table whether or not it exists.
pub fn delete_text(family: &str, name: &str) -> String {
    format!("table {family} {name}\ndelete table {family} {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_text_declares_deletes_and_redefines() {
        let mut t = Table::new("ip", "shoal-test");
        t.base_chain("pre", Hook { kind: "nat", hook: "prerouting", priority: "dstnat" }, &["jump svc"])
            .chain("svc", &["ip daddr 10.43.0.1 tcp dport 80 dnat to 10.42.0.2:8080"])
            .set("set", "aff", "type ipv4_addr; flags dynamic,timeout; timeout 10800s;");
        let text = t.replace_text();
        assert!(text.starts_with("table ip shoal-test\ndelete table ip shoal-test\n\ntable ip shoal-test {\n"));
        assert!(text.contains("    type nat hook prerouting priority dstnat; policy accept;\n    jump svc\n"));
        assert!(text.contains("  set aff {\n    type ipv4_addr; flags dynamic,timeout; timeout 10800s;\n  }\n"));
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn update_text_writes_only_what_changed() {
        let aff = "type ipv4_addr; flags dynamic,timeout; timeout 10800s;";
        let mut old = Table::new("ip", "t");
        old.set("set", "aff-a", aff)
            .set("set", "aff-b", aff)
            .set("set", "aff-c", aff)
            .chain("a", &["accept"])
            .chain("b", &["drop"])
            .chain("c", &["ip saddr @aff-c accept"])
            .chain("d", &["ip saddr @aff-cc accept"])
            .chain("same", &["counter"]);
        let mut new = Table::new("ip", "t");
        new.set("set", "aff-a", aff)
            .set("set", "aff-c", "type ipv4_addr; flags dynamic,timeout; timeout 5s;")
            .chain("a", &["drop"])
            .chain("c", &["ip saddr @aff-c accept"])
            .chain("d", &["ip saddr @aff-cc accept"])
            .chain("same", &["counter"])
            .chain("e", &["accept"]);
        let text = new.update_text(&old);
        // a changed, c uses the recreated aff-c, b went; d (aff-cc is another set), same and
        // aff-a are left alone.
        let expected = "flush chain ip t a\nflush chain ip t c\nflush chain ip t b\ndelete set ip t aff-c\n\
            table ip t {\n  set aff-c {\n    type ipv4_addr; flags dynamic,timeout; timeout 5s;\n  }\n\
            \x20 chain a {\n    drop\n  }\n  chain c {\n    ip saddr @aff-c accept\n  }\n  chain e {\n    accept\n  }\n}\n\
            delete chain ip t b\ndelete set ip t aff-b\n";
        assert_eq!(text, expected);
        // Nothing changed: nothing to write. Another table altogether is replaced.
        assert_eq!(new.update_text(&new), "");
        assert_eq!(Table::new("ip", "u").update_text(&old), Table::new("ip", "u").replace_text());
    }

    #[test]
    fn fake_records_and_fails_on_demand() {
        let f = FakeNft::new();
        f.apply("table ip a\n").unwrap();
        f.fail_with(Some("syntax error"));
        assert!(matches!(f.apply("x"), Err(Error::ApplyRuleset { stderr }) if stderr == "syntax error"));
        assert_eq!(f.applied(), vec!["table ip a\n".to_string()]);
    }
}
