//! `zkbridge diff`.

use std::process::ExitCode;

use super::load;
use crate::diff::DifferenceKind;

pub async fn diff(path: &std::path::Path, route: Option<&str>, json: bool) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match crate::diff::diff(&resolved, route).await {
        Ok(differences) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&differences).expect("JSON"));
            } else if differences.is_empty() {
                println!("in sync");
            } else {
                for d in &differences {
                    let side = match d.kind {
                        DifferenceKind::Missing => "only in source",
                        DifferenceKind::Extra => "only in target",
                        DifferenceKind::Kept => "diverged (kept by policy)",
                        DifferenceKind::Different => "data differs",
                    };
                    println!(
                        "{}/{} {:<9} {} -> {} ({side})",
                        d.route,
                        d.target,
                        d.kind.as_str(),
                        d.source_path,
                        d.target_path
                    );
                }
                let drift = differences.iter().filter(|d| d.is_drift()).count();
                println!("{drift} difference(s), {} kept by policy", differences.len() - drift);
            }
            if !differences.iter().any(|d| d.is_drift()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("zkbridge diff: {e:#}");
            ExitCode::from(2)
        }
    }
}
