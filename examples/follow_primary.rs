//! Following a route's primary, as an application that writes only to the
//! primary region does: print it now and at every switchover or fail-over.
//!
//! ```sh
//! cargo run --example follow_primary -- config/local.toml demo local
//! ```

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, route, member] = args.as_slice() else {
        anyhow::bail!("usage: follow_primary CONFIG ROUTE MEMBER-ENSEMBLE");
    };
    let config = zkbridge::config::load(std::path::Path::new(config))?;
    let client = zkbridge::zk::connect(config.ensemble(member)).await?;
    let meta = &config.config.bridge.meta_path;
    zkbridge::role_watch::follow(&client, meta, route, |primary| {
        match primary {
            Some(p) => println!(
                "epoch {}: primary {} (fence writes on role version {})",
                p.epoch, p.ensemble, p.version
            ),
            None => println!("no role yet: the configured source is primary until a bridge runs"),
        }
        true
    })
    .await?;
    Ok(())
}
