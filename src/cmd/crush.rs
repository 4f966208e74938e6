//! `aspen crush build|test|diff`: CRUSH map tools over `aspen-placement`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use aspen_placement::Weight;
use aspen_placement::analysis::{self, MovementReport, UtilizationReport};
use aspen_placement::crush::{CompiledMap, CrushMap, DEFAULT_RULE};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum CrushCommand {
    /// Print a map of HOSTS hosts with OSDS_PER_HOST OSDs each, as JSON.
    Build {
        #[arg(long)]
        hosts: u32,
        #[arg(long)]
        osds_per_host: u32,
        /// CRUSH weight of every OSD.
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
    },
    /// Map PGs 0..PGS with a rule and report how evenly they spread.
    Test {
        /// The map (JSON, as `build` prints it); `-` reads standard input.
        #[arg(long)]
        map: PathBuf,
        #[command(flatten)]
        placement: PlacementArgs,
        /// Print each OSD's replica count against its expected share.
        #[arg(long)]
        show_utilization: bool,
        /// Print every mapping.
        #[arg(long)]
        show_mappings: bool,
    },
    /// Map PGs 0..PGS with two maps and report what moved.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        placement: PlacementArgs,
    },
}

#[derive(Args)]
pub struct PlacementArgs {
    /// Replicas per PG (the pool size).
    #[arg(long, default_value_t = 3)]
    size: usize,
    /// Number of PGs (CRUSH inputs 0..PGS).
    #[arg(long, default_value_t = 4096)]
    pgs: u32,
    #[arg(long, default_value = DEFAULT_RULE)]
    rule: String,
}

pub fn run(command: CrushCommand) -> anyhow::Result<()> {
    match command {
        CrushCommand::Build {
            hosts,
            osds_per_host,
            weight,
        } => {
            let map = CrushMap::uniform(hosts, osds_per_host, Weight::from_f64(weight)?)?;
            map.validate()?;
            println!("{}", map.to_json());
        }
        CrushCommand::Test {
            map,
            placement,
            show_utilization,
            show_mappings,
        } => test(&load(&map)?, &placement, show_utilization, show_mappings)?,
        CrushCommand::Diff {
            old,
            new,
            placement,
        } => diff(&load(&old)?, &load(&new)?, &placement)?,
    }
    Ok(())
}

/// Reads and compiles a map file (`-` reads standard input).
fn load(path: &Path) -> anyhow::Result<CompiledMap> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let map = CrushMap::from_json(&text).with_context(|| format!("in {}", path.display()))?;
    map.compile()
        .with_context(|| format!("in {}", path.display()))
}

fn test(
    map: &CompiledMap,
    args: &PlacementArgs,
    show_utilization: bool,
    show_mappings: bool,
) -> anyhow::Result<()> {
    let rule = map.rule(&args.rule)?;
    map.check_rule(rule, args.size)?;
    let weights = map.all_in();
    if show_mappings {
        for x in 0..args.pgs {
            let chosen = map.select(rule, x, args.size, &weights)?;
            println!("x {x}: {}", format_set(&chosen));
        }
    }
    let started = Instant::now();
    let report = analysis::utilization(map, &weights, &args.rule, args.size, 0..args.pgs)?;
    let elapsed = started.elapsed();
    print_utilization(&report, args, elapsed, show_utilization);
    Ok(())
}

fn format_set(set: &[Option<aspen_placement::OsdId>]) -> String {
    let members: Vec<String> = set
        .iter()
        .map(|o| o.map_or_else(|| "-".to_string(), |o| o.0.to_string()))
        .collect();
    format!("[{}]", members.join(","))
}

fn print_utilization(
    report: &UtilizationReport,
    args: &PlacementArgs,
    elapsed: std::time::Duration,
    per_device: bool,
) {
    let per_mapping = elapsed.as_secs_f64() / report.mappings.max(1) as f64;
    println!(
        "rule {} size {}: {} mappings in {:.3} s ({:.2} us each)",
        args.rule,
        args.size,
        report.mappings,
        elapsed.as_secs_f64(),
        per_mapping * 1e6
    );
    println!(
        "mappings short of {} devices: {}",
        args.size, report.short_mappings
    );
    if per_device {
        for d in &report.devices {
            println!(
                "  {:>9} weight {:>9.5}  count {:>8}  expected {:>10.1}  {:+6.2}%",
                d.osd.to_string(),
                d.weight.to_f64(),
                d.count,
                d.expected,
                d.deviation() * 100.0
            );
        }
    }
    if let Some(worst) = report.worst() {
        println!(
            "replicas per device: stddev {:.2}; worst {} with {} against {:.1} expected ({:+.2}%)",
            report.stddev(),
            worst.osd,
            worst.count,
            worst.expected,
            worst.deviation() * 100.0
        );
    }
}

fn diff(old: &CompiledMap, new: &CompiledMap, args: &PlacementArgs) -> anyhow::Result<()> {
    let (old_weights, new_weights) = (old.all_in(), new.all_in());
    let report = analysis::movement(
        (old, &old_weights),
        (new, &new_weights),
        &args.rule,
        args.size,
        0..args.pgs,
    )?;
    print_movement(&report);
    Ok(())
}

fn print_movement(report: &MovementReport) {
    println!(
        "PGs whose set changed: {} of {} ({:.3}%)",
        report.changed_mappings,
        report.mappings,
        100.0 * report.changed_mappings as f64 / report.mappings.max(1) as f64
    );
    println!(
        "replicas moved: {} of {} ({:.3}%); theoretical minimum {:.3}%; ratio {:.3}",
        report.moved,
        report.replicas,
        report.moved_fraction() * 100.0,
        report.optimal_fraction * 100.0,
        report.ratio_to_optimal()
    );
    let mut gainers: Vec<_> = report.gained.iter().collect();
    gainers.sort_by(|a, b| b.1.cmp(a.1));
    for (osd, count) in gainers.iter().take(5) {
        println!(
            "  to {osd}: {count} ({:.1}% of moved)",
            100.0 * **count as f64 / report.moved.max(1) as f64
        );
    }
}
