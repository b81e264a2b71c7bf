//! `tuwen info`: parameter count and compute of a checkpoint or a standard architecture.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tuwen::hub;
use tuwen::models::vit::{self, ViTConfig};

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint folder or HF repo id.
    #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
    model: Option<String>,
    /// A standard architecture: vit-ti16, vit-s16, vit-b16, vit-b32, vit-l16, vit-l32, vit-h14.
    #[arg(long)]
    arch: Option<String>,
    /// Classes of the classifier head built for --arch.
    #[arg(long, default_value_t = 1000)]
    num_labels: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn describe_vit(cfg: &ViTConfig, architecture: &str, params: u64) -> Value {
    let classifier = architecture == "ViTForImageClassification";
    let macs = cfg.macs(classifier);
    json!({
        "model_type": "vit",
        "architecture": architecture,
        "params": params,
        "macs": macs,
        "flops": 2 * macs,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_labels": cfg.num_labels(),
    })
}

pub fn run(args: InfoArgs) -> Result<()> {
    let info = if let Some(name) = &args.arch {
        let Some(cfg) = vit::arch(name, args.num_labels) else {
            bail!("unknown --arch {name:?} (known: {})", vit::ARCHS.join(", "));
        };
        describe_vit(&cfg, "ViTForImageClassification", cfg.num_params(true))
    } else {
        let folder = hub::resolve(args.model.as_deref().expect("clap requires one"))?;
        let mc = hub::ModelConfig::read(&folder)?;
        if mc.model_type != "vit" {
            bail!(
                "{}: unsupported model_type {:?} (supported: vit)",
                mc.path.display(),
                mc.model_type
            );
        }
        let (_, cfg) = vit::read_config(&folder)?;
        // Count what the checkpoint holds: exact whatever heads it has.
        let mut params = 0u64;
        for file in hub::weight_files(&folder)? {
            for shape in hub::safetensors_header(&file)?.values() {
                params += shape.iter().product::<usize>() as u64;
            }
        }
        let architecture = mc.architecture.as_deref().unwrap_or("ViTModel");
        describe_vit(&cfg, architecture, params)
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
