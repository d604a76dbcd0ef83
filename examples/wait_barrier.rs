//! The cross-region barrier, as an application uses it: write a value in
//! the source region, take the zxid from the reply, and wait until every
//! region mirrored by the route has it.
//!
//! ```sh
//! cargo run --example wait_barrier -- config/local.toml demo /demo/feature-flag on
//! ```

use std::time::Duration;

use zookeeper_client::{Acls, CreateMode, Error};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, route, path, value] = args.as_slice() else {
        anyhow::bail!("usage: wait_barrier CONFIG ROUTE PATH VALUE");
    };
    let config = zkbridge::config::load(std::path::Path::new(config))?;
    let source = &config
        .routes
        .iter()
        .find(|r| r.name() == route)
        .ok_or_else(|| anyhow::anyhow!("no route {route}"))?
        .source;
    let client = zkbridge::zk::connect(config.ensemble(&source.ensemble)).await?;

    // 1. Write in the source region; the reply's stat carries the zxid.
    let zxid = match client.set_data(path, value.as_bytes(), None).await {
        Ok(stat) => stat.mzxid,
        Err(Error::NoNode) => {
            let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
            client.create(path, value.as_bytes(), &options).await?.0.czxid
        }
        Err(e) => return Err(e.into()),
    };
    println!("wrote {path} = {value:?} at zxid {zxid:#x}");

    // 2. Wait until every target region applied it.
    let reached = zkbridge::wait::until_applied(&config, &client, route, zxid, Duration::from_secs(30)).await?;
    if reached {
        println!("every region of route {route} has it");
        Ok(())
    } else {
        anyhow::bail!("not every region applied {zxid:#x} within 30 s (see `zkbridge status`)")
    }
}
