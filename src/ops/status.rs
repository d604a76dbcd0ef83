//! `zkbridge status`.

use std::process::ExitCode;
use std::time::Duration;

use super::load;

pub async fn status(path: &std::path::Path, json: bool) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut sessions = crate::status::Sessions::new();
    for (name, ensemble) in &resolved.config.ensembles {
        let timeout = Duration::from_millis(ensemble.session_timeout_ms).max(crate::status::READ_TIMEOUT);
        let session = match tokio::time::timeout(timeout, crate::zk::connect(ensemble)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no session within {}s", timeout.as_secs())),
        };
        sessions.insert(name.clone(), session);
    }
    let status = crate::status::collect(&resolved, &sessions).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("JSON"));
    } else {
        print!("{}", crate::status::render_text(&status));
    }
    ExitCode::SUCCESS
}
