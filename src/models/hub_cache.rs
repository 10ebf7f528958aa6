//! Finding weight files users already have. An explicit path always wins; otherwise rcaflow
//! looks for the file's standard name where torch's hub cache keeps checkpoints
//! (`torch.hub.get_dir()/checkpoints`: `$TORCH_HOME/hub/checkpoints`, else
//! `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`).
//! rcaflow never downloads anything: when the file is not there, the error says which file it
//! needs and every place it looked.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what}: no path given and \"{file}\" is not in {}; pass its path ({hint})", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
pub struct NotFound {
    pub what: String,
    pub file: String,
    pub searched: Vec<PathBuf>,
    pub hint: String,
}

/// The folders torch would use for hub checkpoints, in torch's order of precedence.
pub fn checkpoint_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = env("TORCH_HOME") {
        return vec![home.join("hub").join("checkpoints")];
    }
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")));
    cache.map(|c| vec![c.join("torch").join("hub").join("checkpoints")]).unwrap_or_default()
}

/// `explicit` if given, else the first `file` found in the hub cache.
pub fn locate(explicit: Option<&Path>, file: &str, what: &str, hint: &str) -> Result<PathBuf, NotFound> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let dirs = checkpoint_dirs();
    dirs.iter().map(|d| d.join(file)).find(|p| p.is_file()).ok_or_else(|| NotFound {
        what: what.to_string(),
        file: file.to_string(),
        searched: dirs,
        hint: hint.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_missing_file_names_where_it_looked() {
        assert_eq!(locate(Some(Path::new("/x/y.pth")), "y.pth", "inception", "--inception FILE").unwrap(), PathBuf::from("/x/y.pth"));
        let err = NotFound {
            what: "inception weights".into(),
            file: "pt_inception.pth".into(),
            searched: vec![PathBuf::from("/a/hub/checkpoints")],
            hint: "--inception FILE".into(),
        };
        assert_eq!(
            err.to_string(),
            "inception weights: no path given and \"pt_inception.pth\" is not in /a/hub/checkpoints; pass its path (--inception FILE)"
        );
    }
}
