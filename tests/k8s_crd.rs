//! The CRD the chart ships is exactly what `simpleloggers crd` prints.

/// Fails when `charts/simpleloggers/crds/logcluster.yaml` drifts from the Rust types.
#[test]
fn committed_crd_matches_generated() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/simpleloggers/crds/logcluster.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = simpleloggers::k8s::crd::crd_yaml().expect("the CRD renders");
    assert!(
        committed == generated,
        "{path} is out of date with the LogCluster types; regenerate it with:\n    \
         cargo run -- crd > charts/simpleloggers/crds/logcluster.yaml"
    );
}

/// The generated YAML parses back as a CustomResourceDefinition with the expected names.
#[test]
fn generated_crd_parses() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let yaml = simpleloggers::k8s::crd::crd_yaml().unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(crd.spec.names.plural, "logclusters");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["lc".to_string()][..])
    );
}
