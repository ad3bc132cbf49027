//! `docs/api.yaml` stays true: every route the server has is described
//! there, and every path described there is a route (the `{action}`
//! routes as their three actions).

use std::collections::BTreeSet;

fn read(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn every_route_is_documented_and_every_documented_path_is_a_route() {
    let source = read("src/http.rs");
    let mut routes = BTreeSet::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix(".route(\"") else {
            continue;
        };
        let path = rest.split('"').next().unwrap();
        if path.ends_with("/{action}") {
            for a in ["suspend", "resume", "delete"] {
                routes.insert(path.replace("{action}", a));
            }
        } else {
            routes.insert(path.to_owned());
        }
    }
    // `/v1/cards/{action}` is documented with its parameter.
    let routes: BTreeSet<String> = routes
        .into_iter()
        .map(|r| {
            if r.starts_with("/v1/cards/") {
                "/v1/cards/{action}".to_owned()
            } else {
                r
            }
        })
        .collect();
    let doc = read("../docs/api.yaml");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("  /v1/") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_owned())
        .collect();
    assert!(routes.len() >= 12, "{routes:?}");
    assert_eq!(routes, documented);
}
