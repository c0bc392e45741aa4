// The status page: reads the Kubernetes API of the node that served it, with the bearer token
// the user signs in with (kept in this tab's sessionStorage, never in a URL), so RBAC decides
// what it shows. Lists, then follows watches; relists when a watch ends.
"use strict";
(function () {
  const KEY = "shoal-token";
  const $ = (id) => document.getElementById(id);
  const state = { lease: new Map(), nodes: new Map(), pods: new Map(), services: new Map(), events: new Map(), denied: new Set() };
  let stop = null;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
    return e;
  }
  function table(head, rows) {
    const t = el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const r of rows) t.append(r);
    return t;
  }
  const key = (o) => (o.metadata.namespace ? o.metadata.namespace + "/" : "") + o.metadata.name;

  class Unauthorized extends Error {}
  class Forbidden extends Error {}

  async function get(path, signal) {
    const r = await fetch(path, {
      headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY), Accept: "application/json" },
      signal, cache: "no-store", credentials: "omit",
    });
    if (r.status === 401) throw new Unauthorized();
    if (r.status === 403) throw new Forbidden();
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r;
  }

  // Keeps `map` equal to the objects at `path`: a list, then a watch from its resourceVersion.
  async function follow(name, path, map, signal) {
    while (!signal.aborted) {
      try {
        const list = await (await get(path, signal)).json();
        map.clear();
        for (const o of list.items || []) map.set(key(o), o);
        state.denied.delete(name);
        render();
        const sep = path.includes("?") ? "&" : "?";
        const r = await get(path + sep + "watch=true&allowWatchBookmarks=true&resourceVersion=" +
          encodeURIComponent(list.metadata.resourceVersion || ""), signal);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i).trim();
            buf = buf.slice(i + 1);
            if (!line) continue;
            const ev = JSON.parse(line);
            if (ev.type === "ADDED" || ev.type === "MODIFIED") map.set(key(ev.object), ev.object);
            else if (ev.type === "DELETED") map.delete(key(ev.object));
            else if (ev.type === "ERROR") throw new Error("watch error");
            render();
          }
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof Unauthorized) { signOut("The token was refused (401)."); return; }
        if (e instanceof Forbidden) { state.denied.add(name); map.clear(); render(); }
        status("reconnecting " + name + "…");
      }
      // A section the token may not read is asked again now and then (a binding may come).
      await new Promise((res) => setTimeout(res, state.denied.has(name) ? 30000 : 2000));
    }
  }

  function cond(o, type) {
    const c = ((o.status || {}).conditions || []).find((c) => c.type === type);
    return c ? c.status : "Unknown";
  }
  function denied(name) { return el("p", { class: "muted" }, "Not allowed for this token (RBAC)."); }

  // The Raft members and the leader: the Lease kube-system/shoal-leader the leader keeps
  // (holderIdentity, and the annotation shoal.dev/members "name=role,...").
  const LEASE = "kube-system/shoal-leader";
  function renderCluster() {
    const box = $("cluster");
    box.replaceChildren();
    if (state.denied.has("lease")) { box.append(denied()); $("cluster-count").textContent = ""; return; }
    const l = state.lease.get(LEASE);
    if (!l) { box.append(el("p", { class: "muted" }, "No leader known yet.")); $("cluster-count").textContent = ""; return; }
    const spec = l.spec || {};
    const leader = spec.holderIdentity || "";
    const members = new Map();
    for (const m of (((l.metadata || {}).annotations || {})["shoal.dev/members"] || "").split(",")) {
      const i = m.indexOf("=");
      if (i > 0) members.set(m.slice(0, i), m.slice(i + 1));
    }
    if (leader && !members.has(leader)) members.set(leader, "voter");
    $("cluster-count").textContent = String(members.size);
    box.append(table(["Member", "Role", "Node"], [...members.keys()].sort().map((name) => {
      const n = state.nodes.get(name);
      const ready = n ? cond(n, "Ready") : "";
      const lead = name === leader;
      return el("tr", { "data-member": name, "data-role": members.get(name), "data-leader": String(lead) },
        el("td", {}, name, lead ? el("strong", { class: "lead" }, " leader") : ""),
        el("td", {}, members.get(name)),
        el("td", { class: !n ? "muted" : ready === "True" ? "ok" : "bad" },
          !n ? (state.denied.has("nodes") ? "" : "no Node") : ready === "True" ? "Ready" : "NotReady"));
    })));
    if (spec.renewTime) box.append(el("p", { class: "muted" }, "Lease renewed " + spec.renewTime.replace("T", " ").replace(/\.\d+/, "")));
  }

  function renderNodes() {
    const box = $("nodes");
    box.replaceChildren();
    if (state.denied.has("nodes")) { box.append(denied()); $("nodes-count").textContent = ""; return; }
    const nodes = [...state.nodes.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    $("nodes-count").textContent = String(nodes.length);
    box.append(table(["Node", "Ready", "Pressure", "Address", "Pods"], nodes.map((n) => {
      const ready = cond(n, "Ready");
      const pressure = ["MemoryPressure", "DiskPressure", "PIDPressure"].filter((t) => cond(n, t) === "True");
      const addr = ((n.status || {}).addresses || []).find((a) => a.type === "InternalIP");
      const pods = [...state.pods.values()].filter((p) => p.spec.nodeName === n.metadata.name).length;
      return el("tr", { "data-node": n.metadata.name, "data-ready": ready },
        el("td", {}, n.metadata.name),
        el("td", { class: ready === "True" ? "ok" : "bad" }, ready === "True" ? "Ready" : "NotReady"),
        el("td", { class: pressure.length ? "bad" : "" }, pressure.join(", ") || "none"),
        el("td", {}, addr ? addr.address : ""),
        el("td", {}, pods));
    })));
  }

  function renderPods() {
    const box = $("pods");
    box.replaceChildren();
    if (state.denied.has("pods")) { box.append(denied()); $("pods-count").textContent = ""; return; }
    const byNode = new Map();
    for (const p of state.pods.values()) {
      const n = p.spec.nodeName || "(not scheduled)";
      if (!byNode.has(n)) byNode.set(n, []);
      byNode.get(n).push(p);
    }
    $("pods-count").textContent = String(state.pods.size);
    for (const n of [...byNode.keys()].sort()) {
      const pods = byNode.get(n).sort((a, b) => key(a).localeCompare(key(b)));
      box.append(el("div", { class: "node" }, el("h3", {}, n), table(["Pod", "Phase", "Restarts"], pods.map((p) => {
        const phase = p.metadata.deletionTimestamp ? "Terminating" : (p.status || {}).phase || "Pending";
        const restarts = ((p.status || {}).containerStatuses || []).reduce((s, c) => s + (c.restartCount || 0), 0);
        return el("tr", { "data-pod": key(p), "data-phase": phase },
          el("td", {}, key(p)),
          el("td", { class: phase === "Running" || phase === "Succeeded" ? "ok" : "bad" }, phase),
          el("td", { class: restarts ? "bad" : "" }, restarts));
      }))));
    }
  }

  // The node announcing a LoadBalancer IP: the newest `nodeAssigned` Event of the Service.
  function announcer(svc) {
    let best = null;
    for (const e of state.events.values()) {
      const io = e.involvedObject || {};
      if (e.reason !== "nodeAssigned" || io.kind !== "Service" || io.name !== svc.metadata.name ||
        io.namespace !== svc.metadata.namespace) continue;
      const t = e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || "";
      if (!best || t > best.t) best = { t, m: /node "([^"]+)"/.exec(e.message || "") };
    }
    return best && best.m ? best.m[1] : "";
  }

  function renderServices() {
    const box = $("services");
    box.replaceChildren();
    if (state.denied.has("services")) { box.append(denied()); return; }
    const svcs = [...state.services.values()].sort((a, b) => key(a).localeCompare(key(b)));
    box.append(table(["Service", "Type", "Cluster IP", "LoadBalancer IP", "Announced by"], svcs.map((s) => {
      const ips = (((s.status || {}).loadBalancer || {}).ingress || []).map((i) => i.ip || i.hostname).join(", ");
      return el("tr", { "data-service": key(s) },
        el("td", {}, key(s)), el("td", {}, s.spec.type || "ClusterIP"), el("td", {}, s.spec.clusterIP || ""),
        el("td", {}, ips), el("td", {}, s.spec.type === "LoadBalancer" ? announcer(s) : ""));
    })));
  }

  function renderEvents() {
    const box = $("events");
    box.replaceChildren();
    if (state.denied.has("events")) { box.append(denied()); return; }
    const evs = [...state.events.values()].filter((e) => e.type === "Warning")
      .map((e) => ({ e, t: e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || "" }))
      .sort((a, b) => b.t.localeCompare(a.t)).slice(0, 30);
    if (!evs.length) { box.append(el("p", { class: "muted" }, "No warnings.")); return; }
    box.append(table(["When", "Object", "Reason", "Message"], evs.map(({ e, t }) => {
      const io = e.involvedObject || {};
      return el("tr", {}, el("td", {}, t.replace("T", " ").replace("Z", "")),
        el("td", {}, (io.kind || "") + " " + (io.namespace ? io.namespace + "/" : "") + (io.name || "")),
        el("td", { class: "bad" }, e.reason || ""), el("td", {}, e.message || ""));
    })));
  }

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      renderCluster(); renderNodes(); renderPods(); renderServices(); renderEvents();
      status("live, " + new Date().toLocaleTimeString());
    });
  }
  function status(t) { $("state").textContent = t; }

  function start() {
    $("signin").hidden = true;
    $("views").hidden = false;
    $("signout").hidden = false;
    const ctl = new AbortController();
    stop = () => ctl.abort();
    follow("lease", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases?fieldSelector=metadata.name%3Dshoal-leader",
      state.lease, ctl.signal);
    follow("nodes", "/api/v1/nodes", state.nodes, ctl.signal);
    follow("pods", "/api/v1/pods", state.pods, ctl.signal);
    follow("services", "/api/v1/services", state.services, ctl.signal);
    follow("events", "/api/v1/events", state.events, ctl.signal);
  }

  function signOut(msg) {
    if (stop) stop();
    stop = null;
    sessionStorage.removeItem(KEY);
    for (const m of [state.lease, state.nodes, state.pods, state.services, state.events]) m.clear();
    $("views").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("error").textContent = msg || "";
    status("");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      $("token").value = "";
      if (!t) return;
      sessionStorage.setItem(KEY, t);
      // A token the API does not accept is refused here, before any view starts.
      try { await get("/version"); } catch (e) {
        signOut(e instanceof Unauthorized ? "The token was refused (401)." : "Cannot reach the API: " + e.message);
        return;
      }
      $("error").textContent = "";
      start();
    });
    $("signout").addEventListener("click", () => signOut(""));
    if (sessionStorage.getItem(KEY)) start();
  });
})();
