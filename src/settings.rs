//! Deployment settings: what is not part of the graph (metrics address, log level, checkpoint
//! interval, shutdown deadline, device). Defaults are in `config/rcaflow.toml`; command-line
//! flags override the file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::models::device::{DeviceError, DeviceSpec};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Prometheus listen address; `off` disables the exporter.
    pub listen: String,
    /// Seconds a run that was scraped while it ran keeps serving its metrics after its final
    /// values are set, until one more scrape has carried them (0: exit at once).
    pub final_scrape_wait_secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, `rcaflow=debug,warn`, ...
    pub level: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Seconds between accumulator checkpoints in the run directory.
    pub checkpoint_interval_secs: f64,
    /// Seconds a graceful stop may take before the run gives up on busy stages.
    pub shutdown_deadline_secs: f64,
    /// Where models run: `cpu`.
    pub device: String,
    /// CPU threads of the process-wide kernel pool that every stage without `threads = N`
    /// shares; 0: one per core (`--threads` overrides).
    pub threads: usize,
    /// MiB of features each kid or precision_recall sink keeps in memory; past it they go to
    /// a file in the run directory (`state/<sink>.features`).
    pub feature_memory_mib: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub runtime: RuntimeSettings,
    /// How large an input image may be (checked from its header before decoding).
    pub images: crate::data::image_folder::ImageLimits,
    /// How large a weights file may be.
    pub weights: WeightsSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsSettings {
    /// The largest weights file (.safetensors, .pth) read, in MiB; its tensors take at most a
    /// few times its size.
    pub max_mib: u64,
}

impl Default for WeightsSettings {
    fn default() -> Self {
        WeightsSettings { max_mib: crate::models::weights::DEFAULT_MAX_WEIGHTS_MIB }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { listen: "127.0.0.1:9898".into(), final_scrape_wait_secs: 60.0 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: "info".into() }
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            checkpoint_interval_secs: 30.0,
            shutdown_deadline_secs: 30.0,
            device: "cpu".into(),
            threads: 0,
            feature_memory_mib: 4096,
        }
    }
}

impl Settings {
    /// Reads a settings file; every field is optional.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: label.clone(), source })?;
        let settings: Settings = toml::from_str(&text)
            .map_err(|e| SettingsError::Invalid { path: label.clone(), message: crate::topology::config::one_line(e.message()) })?;
        settings.check().map_err(|message| SettingsError::Invalid { path: label, message })?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        self.metrics_addr()?;
        self.final_scrape_wait()?;
        for (name, v) in [
            ("runtime.checkpoint_interval_secs", self.runtime.checkpoint_interval_secs),
            ("runtime.shutdown_deadline_secs", self.runtime.shutdown_deadline_secs),
        ] {
            crate::limits::seconds(name, v)?;
        }
        let i = &self.images;
        if i.max_width == 0 || i.max_height == 0 || i.max_alloc_mib == 0 {
            return Err(format!(
                "images.max_width, images.max_height and images.max_alloc_mib must be positive, found {}, {} and {}",
                i.max_width, i.max_height, i.max_alloc_mib
            ));
        }
        if self.runtime.threads > crate::models::threads::MAX_THREADS {
            return Err(format!(
                "runtime.threads must be 0 (one per core) or a number of CPU threads up to {}, found {}",
                crate::models::threads::MAX_THREADS,
                self.runtime.threads
            ));
        }
        if self.weights.max_mib == 0 {
            return Err("weights.max_mib must be positive, found 0".into());
        }
        Ok(())
    }

    /// The exporter address, or `None` when metrics are off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics.listen.as_str() {
            "off" | "" => Ok(None),
            s => s.parse().map(Some).map_err(|_| format!("metrics.listen \"{s}\": expected HOST:PORT such as 127.0.0.1:9898, or \"off\"")),
        }
    }

    /// How long a run waits for the scrape after its final values; `None` when it does not.
    pub fn final_scrape_wait(&self) -> Result<Option<Duration>, String> {
        match self.metrics.final_scrape_wait_secs {
            0.0 => Ok(None),
            v => crate::limits::seconds("metrics.final_scrape_wait_secs", v).map(Some).map_err(|e| format!("{e} (or 0: no wait)")),
        }
    }

    pub fn shutdown_deadline(&self) -> Duration {
        // Checked when the settings were loaded; the default stands in should a caller have
        // built settings by hand with a value out of range.
        crate::limits::seconds("", self.runtime.shutdown_deadline_secs).unwrap_or(Duration::from_secs(30))
    }

    pub fn checkpoint_interval(&self) -> Duration {
        crate::limits::seconds("", self.runtime.checkpoint_interval_secs).unwrap_or(Duration::from_secs(30))
    }

    /// The default device of model stages (`--device`, else `[runtime] device`).
    pub fn device(&self) -> Result<DeviceSpec, SettingsError> {
        Ok(self.runtime.device.parse()?)
    }

    /// The default device, opened (for the commands that run one model).
    pub fn open_device(&self) -> Result<candle_core::Device, SettingsError> {
        Ok(self.device()?.open()?)
    }
}

/// Opens the device a device string names (`cpu`, `cuda`, `cuda:N`).
pub fn open_device(s: &str) -> Result<candle_core::Device, SettingsError> {
    Ok(s.parse::<DeviceSpec>()?.open()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_equals_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rcaflow.toml");
        let shipped = Settings::load(&path).expect("config/rcaflow.toml loads");
        assert_eq!(toml::to_string(&shipped).unwrap(), toml::to_string(&Settings::default()).unwrap());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[runtime]\nshutdown_deadline_secs = 0\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config {}: runtime.shutdown_deadline_secs must be a positive number of seconds up to 2592000 (30 days), found 0",
                path.display()
            )
        );
        std::fs::write(&path, "[metrics]\nlisten = \"nowhere\"\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("config {}: metrics.listen \"nowhere\": expected HOST:PORT such as 127.0.0.1:9898, or \"off\"", path.display())
        );
        std::fs::write(&path, "[metrics]\nfinal_scrape_wait_secs = -1\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config {}: metrics.final_scrape_wait_secs must be a positive number of seconds up to 2592000 (30 days), found -1 (or 0: no wait)",
                path.display()
            )
        );
        std::fs::write(&path, "[runtime]\ngpu = 1\n").unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("config {}: unknown field `gpu`", path.display())), "{err}");
        assert!(!err.contains('\n'));
        assert_eq!(
            open_device("gpu").unwrap_err().to_string(),
            "device \"gpu\": expected \"cpu\", \"cuda\" or \"cuda:N\" (N the index of a GPU)"
        );
    }
}
