//! Prints Hoard's CRDs: `cargo run -p api --bin crdgen > manifests/crds.yaml`.

fn main() {
    match api::crds::to_yaml() {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => {
            eprintln!("crdgen: cannot render the CRDs as YAML: {e}");
            std::process::exit(1);
        }
    }
}
