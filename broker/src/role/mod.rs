//! The roles the `rmq-broker` binary can run.

pub mod namesrv;
pub mod proxy;
pub mod standalone;
pub mod store;

/// Reads a role's YAML or JSON configuration file and validates its store section. Errors name
/// the file and the bad field.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    store: impl Fn(&T) -> &crate::store::StoreConfig,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: T =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    store(&cfg)
        .validate()
        .with_context(|| format!("{}: store", path.display()))?;
    Ok(cfg)
}
