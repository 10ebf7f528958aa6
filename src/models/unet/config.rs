//! The configuration of diffusers' `UNet2DModel`, read from the `config.json` of a diffusers
//! model folder, and its validation.
//!
//! Reference: diffusers 0.42 `models/unets/unet_2d.py` (`UNet2DModel.__init__`): every parameter
//! of that constructor is a field of [`UNet2DConfig`], with the same name, type and default
//! (`UNet2DConfig::default()` is `UNet2DModel()`). Keys that start with `_` (`_class_name`,
//! `_diffusers_version`, ...) are metadata and ignored; other unknown keys are ignored with a
//! warning, as diffusers does. A value this implementation cannot honour (a block type, an
//! activation, a time embedding it does not implement) is rejected by [`UNet2DConfig::validate`]
//! with a message naming the field and the value, never silently approximated.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest side of `sample_size`, in pixels.
pub const MAX_SAMPLE_SIDE: usize = 4096;
/// Most image channels in or out.
pub const MAX_CHANNELS: usize = 64;
/// Most channels of one block, most blocks, most layers per block, most class embeddings.
pub const MAX_BLOCK_CHANNELS: usize = 8192;
pub const MAX_BLOCKS: usize = 8;
pub const MAX_LAYERS_PER_BLOCK: usize = 16;
pub const MAX_CLASSES: usize = 1 << 20;

/// `sample_size`: an int or an `[height, width]` pair. Only metadata for the model itself (the
/// forward pass takes any size whose sides are multiples of the total downsampling factor);
/// samplers read it to know what to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

impl SampleSize {
    /// (height, width).
    pub fn hw(self) -> (usize, usize) {
        match self {
            SampleSize::Square(s) => (s, s),
            SampleSize::Rect([h, w]) => (h, w),
        }
    }
}

/// diffusers' `UNet2DModel` constructor arguments (its `config.json`). Field semantics are
/// diffusers'; see the module docs for what is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Map the input from [0, 1] to [-1, 1] (`2x - 1`) before `conv_in`.
    pub center_input_sample: bool,
    /// Only `"positional"` (sinusoidal) is supported.
    pub time_embedding_type: String,
    /// Width of the time embedding; `None` (or 0, as diffusers tests truthiness) means
    /// `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<usize>,
    /// `downscale_freq_shift` of the sinusoidal embedding (diffusers types it int; DDPM used 1).
    pub freq_shift: f64,
    /// Order of the sinusoid halves: `[cos, sin]` when true, `[sin, cos]` when false.
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    /// `"UNetMidBlock2D"` or `None` (no mid block).
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// `output_scale_factor` of the mid block's resnets and attention.
    pub mid_block_scale_factor: f64,
    /// Padding of the stride-2 downsampling convs; 0 means "pad right and bottom by one".
    pub downsample_padding: usize,
    /// Downsampler of `AttnDownBlock2D` (`DownBlock2D` always uses a conv): `"conv"` or `"resnet"`.
    pub downsample_type: String,
    /// Upsampler of `AttnUpBlock2D` (`UpBlock2D` always uses a conv): `"conv"` or `"resnet"`.
    pub upsample_type: String,
    /// Dropout before each resnet's second conv; only applied in training mode.
    pub dropout: f64,
    /// `"silu"` (or its alias `"swish"`).
    pub act_fn: String,
    /// Width of one attention head; heads = channels / attention_head_dim. `None`: one head
    /// spanning all channels.
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    /// Groups of the mid-block attention's GroupNorm; `None`: `norm_num_groups` when
    /// `resnet_time_scale_shift` is `"default"`, no GroupNorm otherwise (diffusers' rule).
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    /// How resnets take the time embedding: `"default"` (added) or `"scale_shift"` (FiLM).
    pub resnet_time_scale_shift: String,
    /// Attention in the mid block.
    pub add_attention: bool,
    /// `None` (with `num_class_embeds`: a learned table), `"timestep"` or `"identity"`.
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    /// Only used by the unsupported `"learned"` time embedding; accepted and ignored.
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DConfig {
    /// diffusers 0.42 `UNet2DModel()`.
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: strings(&["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]),
            mid_block_type: Some(MID_BLOCK.into()),
            up_block_types: strings(&["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

/// Every field of [`UNet2DConfig`] (a unit test keeps it in sync with the struct): keys of a
/// config.json outside this list are not read.
pub(crate) const FIELDS: [&str; 28] = [
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
];

const MID_BLOCK: &str = "UNetMidBlock2D";

/// A config.json that cannot be read as a `UNet2DModel` this implementation supports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid json: {0}")]
    Json(String),
    /// A field of the wrong JSON type (e.g. a string where an int is expected).
    #[error("{field}: {cause}")]
    Field { field: String, cause: String },
    #[error("{field} = {value} is not supported; expected {expected}")]
    Unsupported { field: String, value: String, expected: String },
    #[error("{field} = {value}: {reason}")]
    Invalid { field: String, value: String, reason: String },
}

/// The two kinds of down or up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// `DownBlock2D` / `UpBlock2D`: resnets only.
    Plain,
    /// `AttnDownBlock2D` / `AttnUpBlock2D`: an attention after every resnet.
    Attn,
}

/// Down/upsampler of the attention blocks (`downsample_type`, `upsample_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResampleKind {
    /// `Downsample2D` (stride-2 conv) / `Upsample2D` (nearest x2 then conv).
    Conv,
    /// A `ResnetBlock2D` with `down=True` (2x2 average pool) / `up=True` (nearest x2).
    Resnet,
}

/// `resnet_time_scale_shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeShift {
    /// `h = norm2(h + proj(temb))`.
    Default,
    /// `h = norm2(h) * (1 + scale) + shift`, `(scale, shift) = proj(temb)`.
    ScaleShift,
}

/// How class labels enter the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassEmbedKind {
    /// Unconditional.
    None,
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`: integer labels.
    Table(usize),
    /// `TimestepEmbedding` of the labels' sinusoidal embedding.
    Timestep,
    /// The labels are `[N, time_embed_dim]` embeddings already.
    Identity,
}

/// A validated config, with the string fields parsed.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub down: Vec<BlockKind>,
    pub up: Vec<BlockKind>,
    pub mid: bool,
    pub downsample: ResampleKind,
    pub upsample: ResampleKind,
    pub time_shift: TimeShift,
    pub class_embed: ClassEmbedKind,
    pub time_embed_dim: usize,
    /// GroupNorm groups of the mid-block attention (`None`: no GroupNorm).
    pub mid_attn_groups: Option<usize>,
}

/// A JSON rendering of a config value for messages: strings quoted, numbers bare.
fn show<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".to_string())
}

fn unsupported<T: Serialize + ?Sized>(field: impl Into<String>, value: &T, expected: &str) -> ConfigError {
    ConfigError::Unsupported { field: field.into(), value: show(value), expected: expected.into() }
}

fn invalid<T: Serialize + ?Sized>(field: impl Into<String>, value: &T, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), value: show(value), reason: reason.into() }
}

/// diffusers' `get_down_block` / `get_up_block` strip this prefix ("UNetResDownBlock2D" is an
/// old name of "DownBlock2D").
fn strip_unet_res(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

impl UNet2DConfig {
    /// Parses a diffusers config.json. Unknown keys are ignored as diffusers does (with a
    /// warning unless they start with `_`); nothing is validated beyond JSON types (see
    /// [`UNet2DConfig::validate`]).
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let (cfg, unknown) = Self::parse(text)?;
        for key in unknown {
            tracing::warn!("unet config: unknown field \"{key}\" ignored (diffusers ignores it too)");
        }
        Ok(cfg)
    }

    /// The config and its unknown keys not starting with `_`.
    pub(crate) fn parse(text: &str) -> Result<(Self, Vec<String>), ConfigError> {
        let map: Map<String, Value> = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let mut known = Map::new();
        let mut unknown = Vec::new();
        for (key, value) in map {
            if FIELDS.contains(&key.as_str()) {
                known.insert(key, value);
            } else if !key.starts_with('_') {
                unknown.push(key);
            }
        }
        match serde_json::from_value::<Self>(Value::Object(known.clone())) {
            Ok(cfg) => Ok((cfg, unknown)),
            Err(e) => {
                // serde's message does not say which field it was decoding: find it by decoding
                // the fields one at a time (the others take their defaults).
                for (key, value) in known {
                    let one = Map::from_iter([(key.clone(), value)]);
                    if let Err(cause) = serde_json::from_value::<Self>(Value::Object(one)) {
                        return Err(ConfigError::Field { field: key, cause: cause.to_string() });
                    }
                }
                Err(ConfigError::Json(e.to_string()))
            }
        }
    }

    /// The config as a diffusers config.json (with `_class_name`), so that a model written by
    /// this crate loads with `UNet2DModel.from_pretrained`.
    pub fn to_json_string(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("_class_name".into(), Value::String("UNet2DModel".into()));
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// Width of the time (and class) embedding: `time_embedding_dim or 4 * block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        // diffusers writes `time_embedding_dim or ...`: 0 counts as unset.
        match self.time_embedding_dim {
            Some(d) if d > 0 => d,
            _ => 4 * self.block_out_channels.first().copied().unwrap_or(0),
        }
    }

    /// Factor by which the down path shrinks the input: `2^(blocks - 1)`. Sample sides must be
    /// multiples of it, or the skip connections would not line up.
    pub fn downsampling_factor(&self) -> usize {
        1usize << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks every field against what this implementation supports; the first problem is
    /// returned with the field and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, ConfigError> {
        if self.time_embedding_type != "positional" {
            return Err(unsupported("time_embedding_type", &self.time_embedding_type, "positional"));
        }
        // diffusers' get_activation maps both names to nn.SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(unsupported("act_fn", &self.act_fn, "silu"));
        }
        // Upper bounds too: a config.json is a file from elsewhere, and its sizes become
        // allocations (sample_size 100000 once asked for 120 GB and aborted). The bounds are far
        // beyond any published pixel-space UNet.
        for (field, v, max) in [
            ("in_channels", self.in_channels, MAX_CHANNELS),
            ("out_channels", self.out_channels, MAX_CHANNELS),
            ("layers_per_block", self.layers_per_block, MAX_LAYERS_PER_BLOCK),
        ] {
            if v == 0 {
                return Err(invalid(field, &v, "must be at least 1"));
            }
            if v > max {
                return Err(invalid(field, &v, format!("must be at most {max}")));
            }
        }
        if let Some(size) = self.sample_size {
            let (h, w) = size.hw();
            if h == 0 || w == 0 || h > MAX_SAMPLE_SIDE || w > MAX_SAMPLE_SIDE {
                return Err(invalid("sample_size", &size, format!("sides must be between 1 and {MAX_SAMPLE_SIDE} pixels")));
            }
        }
        if let Some(n) = self.num_class_embeds.filter(|&n| n > MAX_CLASSES) {
            return Err(invalid("num_class_embeds", &n, format!("must be at most {MAX_CLASSES}")));
        }
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err(invalid("block_out_channels", &self.block_out_channels, "at least one block is needed"));
        }
        if blocks > MAX_BLOCKS {
            return Err(invalid("block_out_channels", &self.block_out_channels, format!("at most {MAX_BLOCKS} blocks")));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 {
                return Err(invalid(format!("block_out_channels[{i}]"), &c, "must be at least 1"));
            }
            if c > MAX_BLOCK_CHANNELS {
                return Err(invalid(format!("block_out_channels[{i}]"), &c, format!("must be at most {MAX_BLOCK_CHANNELS}")));
            }
        }
        for (field, types) in [("down_block_types", &self.down_block_types), ("up_block_types", &self.up_block_types)] {
            if types.len() != blocks {
                return Err(invalid(
                    field,
                    types,
                    format!("has {} entries but block_out_channels has {blocks}; they must match", types.len()),
                ));
            }
        }
        let down = self
            .down_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match strip_unet_res(t) {
                "DownBlock2D" => Ok(BlockKind::Plain),
                "AttnDownBlock2D" => Ok(BlockKind::Attn),
                _ => Err(unsupported(format!("down_block_types[{i}]"), t, "DownBlock2D or AttnDownBlock2D")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let up = self
            .up_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match strip_unet_res(t) {
                "UpBlock2D" => Ok(BlockKind::Plain),
                "AttnUpBlock2D" => Ok(BlockKind::Attn),
                _ => Err(unsupported(format!("up_block_types[{i}]"), t, "UpBlock2D or AttnUpBlock2D")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mid = match self.mid_block_type.as_deref() {
            None => false,
            Some(MID_BLOCK) => true,
            Some(other) => return Err(unsupported("mid_block_type", other, "UNetMidBlock2D or null")),
        };
        let resample = |field: &str, value: &str| match value {
            "conv" => Ok(ResampleKind::Conv),
            "resnet" => Ok(ResampleKind::Resnet),
            _ => Err(unsupported(field, value, "conv or resnet")),
        };
        let downsample = resample("downsample_type", &self.downsample_type)?;
        let upsample = resample("upsample_type", &self.upsample_type)?;
        let time_shift = match self.resnet_time_scale_shift.as_str() {
            "default" => TimeShift::Default,
            "scale_shift" => TimeShift::ScaleShift,
            other => return Err(unsupported("resnet_time_scale_shift", other, "default or scale_shift")),
        };
        let class_embed = match (self.class_embed_type.as_deref(), self.num_class_embeds) {
            (None, None) => ClassEmbedKind::None,
            (None, Some(0)) => return Err(invalid("num_class_embeds", &0, "must be at least 1")),
            (None, Some(n)) => ClassEmbedKind::Table(n),
            (Some("timestep"), _) => ClassEmbedKind::Timestep,
            (Some("identity"), _) => ClassEmbedKind::Identity,
            (Some(other), _) => return Err(unsupported("class_embed_type", other, "null, timestep or identity")),
        };
        let groups = self.norm_num_groups;
        if groups == 0 {
            return Err(invalid("norm_num_groups", &groups, "must be at least 1"));
        }
        // Every GroupNorm over a block's channels (and over the concatenations of the up path,
        // sums of block widths) uses norm_num_groups.
        if let Some((i, &c)) = self.block_out_channels.iter().enumerate().find(|(_, &c)| !c.is_multiple_of(groups)) {
            return Err(invalid(
                "norm_num_groups",
                &groups,
                format!("must divide every entry of block_out_channels, but block_out_channels[{i}] = {c}"),
            ));
        }
        let last = self.block_out_channels[blocks - 1];
        let mid_attn = mid && self.add_attention;
        let mid_attn_groups = match (self.attn_norm_num_groups, time_shift) {
            (Some(g), _) => Some(g),
            (None, TimeShift::Default) => Some(groups),
            (None, TimeShift::ScaleShift) => None,
        };
        if let (true, Some(g)) = (mid_attn, self.attn_norm_num_groups) {
            if g == 0 || !last.is_multiple_of(g) {
                return Err(invalid(
                    "attn_norm_num_groups",
                    &g,
                    format!("must divide the mid block's channels, block_out_channels[{}] = {last}", blocks - 1),
                ));
            }
        }
        // Channels of every attention: down block i and up block (blocks - 1 - i) work at
        // block_out_channels[i], the mid block at the last width.
        let mut attention_channels: Vec<(String, usize)> = Vec::new();
        for (i, kind) in down.iter().enumerate() {
            if *kind == BlockKind::Attn {
                attention_channels.push((format!("down_blocks.{i}"), self.block_out_channels[i]));
            }
        }
        if mid_attn {
            attention_channels.push(("mid_block".into(), last));
        }
        for (i, kind) in up.iter().enumerate() {
            if *kind == BlockKind::Attn {
                attention_channels.push((format!("up_blocks.{i}"), self.block_out_channels[blocks - 1 - i]));
            }
        }
        if let Some(d) = self.attention_head_dim {
            if d == 0 {
                return Err(invalid("attention_head_dim", &d, "must be at least 1"));
            }
            if let Some((block, c)) = attention_channels.iter().find(|(_, c)| *c < d) {
                return Err(invalid(
                    "attention_head_dim",
                    &d,
                    format!("exceeds the {c} channels of the attention in {block}, which would have no head"),
                ));
            }
        }
        let finite = |field: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::Invalid { field: field.into(), value: v.to_string(), reason: "must be finite".into() })
            }
        };
        finite("norm_eps", self.norm_eps)?;
        finite("freq_shift", self.freq_shift)?;
        finite("mid_block_scale_factor", self.mid_block_scale_factor)?;
        if self.norm_eps < 0.0 {
            return Err(invalid("norm_eps", &self.norm_eps, "must not be negative"));
        }
        if self.mid_block_scale_factor == 0.0 {
            return Err(invalid("mid_block_scale_factor", &self.mid_block_scale_factor, "must not be zero (outputs are divided by it)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", &self.dropout, "must be in [0, 1)"));
        }
        let half = self.block_out_channels[0] / 2;
        if half > 0 && (half as f64 - self.freq_shift) == 0.0 {
            return Err(invalid(
                "freq_shift",
                &self.freq_shift,
                format!(
                    "equals half the timestep embedding width (block_out_channels[0] / 2 = {half}): the frequencies would divide by zero"
                ),
            ));
        }
        Ok(Resolved {
            down,
            up,
            mid,
            downsample,
            upsample,
            time_shift,
            class_embed,
            time_embed_dim: self.time_embed_dim(),
            mid_attn_groups: if mid_attn { mid_attn_groups } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn field_set() -> BTreeSet<&'static str> {
        FIELDS.iter().copied().collect()
    }

    #[test]
    fn fields_list_matches_the_struct() {
        let value = serde_json::to_value(UNet2DConfig::default()).unwrap();
        let keys: BTreeSet<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, field_set());
    }

    #[test]
    fn defaults_are_diffusers_and_validate() {
        let cfg = UNet2DConfig::from_json_str(r#"{"_class_name": "UNet2DModel"}"#).unwrap();
        assert_eq!(cfg, UNet2DConfig::default());
        assert_eq!(cfg.time_embed_dim(), 896);
        assert_eq!(cfg.downsampling_factor(), 8);
        cfg.validate().unwrap();
        // A round trip through the diffusers-style JSON is the identity.
        let back = UNet2DConfig::from_json_str(&cfg.to_json_string()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn nulls_and_sizes_parse() {
        let cfg = UNet2DConfig::from_json_str(
            r#"{"attention_head_dim": null, "mid_block_type": null, "sample_size": [8, 12], "freq_shift": 1,
                "down_block_types": ["UNetResDownBlock2D"], "up_block_types": ["UpBlock2D"], "block_out_channels": [32],
                "some_future_key": 3}"#,
        )
        .unwrap();
        assert_eq!(cfg.attention_head_dim, None);
        assert_eq!(cfg.mid_block_type, None);
        assert_eq!(cfg.sample_size.map(SampleSize::hw), Some((8, 12)));
        assert_eq!(cfg.freq_shift, 1.0);
        let r = cfg.resolve().unwrap();
        assert_eq!(r.down, vec![BlockKind::Plain]);
        assert!(!r.mid);
        let (_, unknown) = UNet2DConfig::parse(r#"{"_x": 1, "y": 2}"#).unwrap();
        assert_eq!(unknown, vec!["y".to_string()]);
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = UNet2DConfig::from_json_str(r#"{"in_channels": 3, "layers_per_block": "2"}"#).unwrap_err();
        assert_eq!(e.to_string(), "layers_per_block: invalid type: string \"2\", expected usize");
        let e = UNet2DConfig::from_json_str("[1]").unwrap_err();
        assert!(e.to_string().starts_with("invalid json: "), "{e}");
    }

    fn err(edit: impl FnOnce(&mut UNet2DConfig)) -> String {
        let mut cfg = UNet2DConfig::default();
        edit(&mut cfg);
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn unsupported_values_are_named() {
        assert_eq!(
            err(|c| c.down_block_types[1] = "CrossAttnDownBlock2D".into()),
            "down_block_types[1] = \"CrossAttnDownBlock2D\" is not supported; expected DownBlock2D or AttnDownBlock2D"
        );
        assert_eq!(
            err(|c| c.up_block_types[3] = "SkipUpBlock2D".into()),
            "up_block_types[3] = \"SkipUpBlock2D\" is not supported; expected UpBlock2D or AttnUpBlock2D"
        );
        assert_eq!(err(|c| c.act_fn = "gelu".into()), "act_fn = \"gelu\" is not supported; expected silu");
        assert_eq!(
            err(|c| c.time_embedding_type = "fourier".into()),
            "time_embedding_type = \"fourier\" is not supported; expected positional"
        );
        assert_eq!(
            err(|c| c.resnet_time_scale_shift = "spatial".into()),
            "resnet_time_scale_shift = \"spatial\" is not supported; expected default or scale_shift"
        );
        assert_eq!(
            err(|c| c.class_embed_type = Some("projection".into())),
            "class_embed_type = \"projection\" is not supported; expected null, timestep or identity"
        );
        assert_eq!(
            err(|c| c.mid_block_type = Some("UNetMidBlock2DCrossAttn".into())),
            "mid_block_type = \"UNetMidBlock2DCrossAttn\" is not supported; expected UNetMidBlock2D or null"
        );
        assert_eq!(err(|c| c.downsample_type = "fir".into()), "downsample_type = \"fir\" is not supported; expected conv or resnet");
    }

    #[test]
    fn inconsistent_values_are_named() {
        assert_eq!(
            err(|c| c.block_out_channels = vec![32, 64]),
            "down_block_types = [\"DownBlock2D\",\"AttnDownBlock2D\",\"AttnDownBlock2D\",\"AttnDownBlock2D\"]: has 4 entries but \
             block_out_channels has 2; they must match"
        );
        assert_eq!(
            err(|c| c.block_out_channels = vec![32, 64, 96, 100]),
            "norm_num_groups = 32: must divide every entry of block_out_channels, but block_out_channels[3] = 100"
        );
        assert_eq!(
            err(|c| c.attention_head_dim = Some(1024)),
            "attention_head_dim = 1024: exceeds the 448 channels of the attention in down_blocks.1, which would have no head"
        );
        assert_eq!(err(|c| c.num_class_embeds = Some(0)), "num_class_embeds = 0: must be at least 1");
        assert_eq!(err(|c| c.dropout = 1.0), "dropout = 1.0: must be in [0, 1)");
        assert_eq!(
            err(|c| {
                c.block_out_channels = vec![32, 64, 96, 128];
                c.attn_norm_num_groups = Some(3)
            }),
            "attn_norm_num_groups = 3: must divide the mid block's channels, block_out_channels[3] = 128"
        );
    }

    #[test]
    fn mid_attention_groups_follow_diffusers() {
        let mut cfg = UNet2DConfig::default();
        assert_eq!(cfg.resolve().unwrap().mid_attn_groups, Some(32));
        cfg.resnet_time_scale_shift = "scale_shift".into();
        assert_eq!(cfg.resolve().unwrap().mid_attn_groups, None);
        cfg.attn_norm_num_groups = Some(8);
        assert_eq!(cfg.resolve().unwrap().mid_attn_groups, Some(8));
        cfg.add_attention = false;
        assert_eq!(cfg.resolve().unwrap().mid_attn_groups, None);
    }
}
