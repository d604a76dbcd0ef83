//! `zkbridge resume` and `zkbridge reset`: the commands that change a
//! route/target's state in its znodes.

use std::process::ExitCode;

use super::{target_session, RouteTarget};

pub async fn resume(path: &std::path::Path, route: &str, target: &str, yes: bool) -> ExitCode {
    let what = format!("this lets {route}/{target} apply again after a stop; resolve the conflicting path first");
    let (resolved, client) = match target_session(path, "resume", RouteTarget { route, target }, yes, &what).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let stop = crate::znodes::stopped_path(&resolved.config.bridge.meta_path, route, target);
    match crate::conflict::read_stopped(&client, &stop).await {
        Ok(None) => {
            println!("{route}/{target} is not stopped");
            return ExitCode::SUCCESS;
        }
        Ok(Some(record)) => println!(
            "clearing the stop of {route}/{target} ({} at {})",
            record.reason, record.path
        ),
        Err(e) => {
            eprintln!("zkbridge resume: {target}:{stop}: {e}");
            return ExitCode::from(2);
        }
    }
    match client.delete(&stop, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {
            println!("{route}/{target} resumes: its leader rescans and applies again");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge resume: {target}:{stop}: {e}");
            ExitCode::from(2)
        }
    }
}

pub async fn reset(path: &std::path::Path, route: &str, target: &str, yes: bool) -> ExitCode {
    let what = format!("this deletes the checkpoint of {route}/{target}: its next leader copies the whole route again");
    let (resolved, client) = match target_session(path, "reset", RouteTarget { route, target }, yes, &what).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let checkpoint = crate::znodes::checkpoint_path(&resolved.config.bridge.meta_path, route, target);
    match client.delete(&checkpoint, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {
            println!("deleted {checkpoint} in {target}: the next leader of {route}/{target} does a full resync");
            println!("(a running leader re-creates it: stop the instances first, or restart them after this)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge reset: {target}:{checkpoint}: {e}");
            ExitCode::from(2)
        }
    }
}
