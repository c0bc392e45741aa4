//! Route lookup with 1,000 Ingress paths (200 of them regex) and the memory the table takes;
//! prints `name: value` lines (see bench/README.md).
//!
//!   cargo run --release -p shoal --example ingress_lookup [PATHS] [REGEX] [LOOKUPS]
fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().unwrap_or(0));
    let paths = args.next().filter(|n| *n > 0).unwrap_or(1000);
    let regex = args.next().unwrap_or(200).min(paths);
    let lookups = args.next().filter(|n| *n > 0).unwrap_or(200_000);
    let f = shoal::ingress::bench::measure(paths, regex, lookups);
    let (before, after) = (f.rss_before_kib, f.rss_with_table_kib);
    println!("ingress_lookup_paths: {}", f.paths);
    println!("ingress_lookup_regex_paths: {}", f.regex_paths);
    println!("ingress_lookup_count: {}", f.lookups);
    println!("ingress_lookup_p50_us: {:.3}", f.p50_us);
    println!("ingress_lookup_p99_us: {:.3}", f.p99_us);
    println!("ingress_lookup_max_us: {:.3}", f.max_us);
    println!("ingress_table_build_ms: {:.2}", f.build_ms);
    println!("ingress_table_rss_kib: {}", after.saturating_sub(before));
    println!("rss_kib_before: {before}");
    println!("rss_kib_with_table: {after}");
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("loadavg_1m: {}", l.split(' ').next().unwrap_or(""));
    }
    if f.hits != f.lookups {
        eprintln!("only {} of {} lookups found their route", f.hits, f.lookups);
        std::process::exit(1);
    }
}
