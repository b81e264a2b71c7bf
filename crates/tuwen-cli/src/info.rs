//! `tuwen info`: parameter count and compute of a checkpoint or a standard architecture.

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};
use tuwen::hub;
use tuwen::models::efficientnet;
use tuwen::models::vit::{self, ViTConfig};

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint folder or HF repo id.
    #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
    model: Option<String>,
    /// A standard architecture: vit-ti16, vit-s16, vit-b16, vit-b32, vit-l16, vit-l32, vit-h14,
    /// efficientnet-b0 .. efficientnet-b7, or efficientnet-custom (with --width, --depth,
    /// --resolution).
    #[arg(long)]
    arch: Option<String>,
    /// efficientnet-custom: width coefficient.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// efficientnet-custom: depth coefficient.
    #[arg(long, default_value_t = 1.0)]
    depth: f64,
    /// efficientnet-custom: input resolution.
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    /// Classes of the classifier head built for --arch.
    #[arg(long, default_value_t = 1000)]
    num_labels: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// MACs and FLOPs (2 per MAC) as JSON numbers, or an error when they pass `u64`.
fn compute(macs: u128) -> Result<(u64, u64)> {
    match u64::try_from(macs)
        .ok()
        .and_then(|m| Some((m, m.checked_mul(2)?)))
    {
        Some(pair) => Ok(pair),
        None => bail!("{macs} MACs per image: more than a 64-bit count holds"),
    }
}

fn describe_vit(cfg: &ViTConfig, architecture: &str, params: u64) -> Result<Value> {
    let classifier = architecture == "ViTForImageClassification";
    let (macs, flops) = compute(cfg.macs(classifier))?;
    Ok(json!({
        "model_type": "vit",
        "architecture": architecture,
        "params": params,
        "macs": macs,
        "flops": flops,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_labels": cfg.num_labels(),
    }))
}

fn describe_effnet(cfg: &efficientnet::EfficientNetConfig, params: u64) -> Result<Value> {
    let (macs, flops) = compute(cfg.macs())?;
    Ok(json!({
        "model_type": "efficientnet",
        "architecture": "EfficientNetForImageClassification",
        "params": params,
        "macs": macs,
        "flops": flops,
        "image_size": cfg.image_size,
        "width_coefficient": cfg.width_coefficient,
        "depth_coefficient": cfg.depth_coefficient,
        "blocks": cfg.blocks().len(),
        "hidden_dim": cfg.hidden_dim,
        "num_labels": cfg.id2label.len(),
    }))
}

pub fn run(args: InfoArgs) -> Result<()> {
    let info = if let Some(name) = &args.arch {
        tuwen::models::check_num_labels(args.num_labels)
            .map_err(|m| anyhow!("--num-labels: {m}"))?;
        let invalid = |m: String| anyhow!("--arch {name}: {m}");
        if name == "efficientnet-custom" {
            let usable = |c: f64| c > 0.0 && c.is_finite();
            if !(usable(args.width) && usable(args.depth) && args.resolution > 0) {
                bail!(
                    "--width and --depth must be positive finite numbers, --resolution a positive integer"
                );
            }
            let cfg = efficientnet::custom(
                args.width,
                args.depth,
                args.resolution,
                0.2,
                args.num_labels,
            );
            cfg.validate().map_err(invalid)?;
            describe_effnet(&cfg, cfg.num_params())?
        } else if let Some(cfg) = efficientnet::arch(name, args.num_labels) {
            cfg.validate().map_err(invalid)?;
            describe_effnet(&cfg, cfg.num_params())?
        } else {
            let Some(cfg) = vit::arch(name, args.num_labels) else {
                bail!(
                    "unknown --arch {name:?} (known: {}, {}, efficientnet-custom)",
                    vit::ARCHS.join(", "),
                    efficientnet::ARCHS.join(", ")
                );
            };
            cfg.validate().map_err(invalid)?;
            describe_vit(&cfg, "ViTForImageClassification", cfg.num_params(true))?
        }
    } else {
        let folder = hub::resolve(args.model.as_deref().expect("clap requires one"))?;
        let mc = hub::ModelConfig::read(&folder)?;
        if mc.model_type != "vit" && mc.model_type != "efficientnet" {
            bail!(
                "{}: unsupported model_type {:?} (supported: vit, efficientnet)",
                mc.path.display(),
                mc.model_type
            );
        }
        // Count what the checkpoint holds: exact whatever heads it has (not running statistics).
        let mut params = 0u64;
        for file in hub::weight_files(&folder)? {
            for (name, shape) in hub::safetensors_header(&file)? {
                if !name.contains("running_") && !name.ends_with("num_batches_tracked") {
                    params += shape.iter().product::<usize>() as u64;
                }
            }
        }
        if mc.model_type == "efficientnet" {
            let (_, cfg) = efficientnet::read_config(&folder)?;
            describe_effnet(&cfg, params)?
        } else {
            let (_, cfg) = vit::read_config(&folder)?;
            let architecture = mc.architecture.as_deref().unwrap_or("ViTModel");
            describe_vit(&cfg, architecture, params)?
        }
    };
    if args.json {
        println!("{info}");
    } else {
        let g = |k: &str| info[k].as_u64().unwrap_or(0);
        println!("{}", info["architecture"].as_str().unwrap_or(""));
        println!(
            "  params  {:>15}  ({:.1} M)",
            group(g("params")),
            g("params") as f64 / 1e6
        );
        println!(
            "  MACs    {:>15}  ({:.2} G per image)",
            group(g("macs")),
            g("macs") as f64 / 1e9
        );
        println!(
            "  FLOPs   {:>15}  ({:.2} G per image, 2 per MAC)",
            group(g("flops")),
            g("flops") as f64 / 1e9
        );
        if info["model_type"] == "efficientnet" {
            println!(
                "  input   {}x{} px, width x{}, depth x{}, {} blocks, head {} channels, {} classes",
                g("image_size"),
                g("image_size"),
                info["width_coefficient"],
                info["depth_coefficient"],
                g("blocks"),
                g("hidden_dim"),
                g("num_labels")
            );
            return Ok(());
        }
        println!(
            "  input   {}x{} px, patch {}, {} layers, width {}, {} heads, {} classes",
            g("image_size"),
            g("image_size"),
            g("patch_size"),
            g("num_hidden_layers"),
            g("hidden_size"),
            g("num_attention_heads"),
            g("num_labels")
        );
    }
    Ok(())
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
