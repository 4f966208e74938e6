//! `aspen mount MOUNTPOINT`: mounts the filesystem with FUSE, in the
//! foreground or (with `--daemon`, as `mount -t aspen` does) in a
//! background process; SIGINT or SIGTERM unmounts cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aspen_fsclient::fuse::{self, MountOptions};
use aspen_proto::cluster::ClusterConfig;
use clap::Args;

/// How long `--daemon` waits for the background mount to appear.
pub const DAEMON_MOUNT_WAIT: Duration = Duration::from_secs(60);
/// How long a stop waits for a detached mount's users to go before it says
/// that it serves them still.
const BUSY_NOTICE_AFTER: Duration = Duration::from_secs(2);
/// mount(8) options that mean nothing to Aspen and are accepted silently.
const IGNORED_OPTIONS: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "dev", "suid",
    "exec", "async", "atime", "relatime", "noatime", "rw",
];

#[derive(Args)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    #[arg(long, default_value = "cluster.json")]
    pub config: PathBuf,
    /// Mount options, comma-separated: allow_other, default_permissions, ro.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Return once mounted; a background process serves the mount.
    #[arg(long)]
    pub daemon: bool,
}

fn parse_options(args: &MountArgs) -> anyhow::Result<MountOptions> {
    let mut options = MountOptions {
        source: format!("aspen:{}", args.config.display()),
        ..MountOptions::default()
    };
    for option in args.options.iter().filter(|o| !o.is_empty()) {
        match option.as_str() {
            "allow_other" => options.allow_other = true,
            "default_permissions" => options.default_permissions = true,
            "ro" => options.read_only = true,
            other if IGNORED_OPTIONS.contains(&other) => {}
            other => anyhow::bail!("unknown mount option {other:?}"),
        }
    }
    Ok(options)
}

pub async fn run(args: MountArgs) -> anyhow::Result<()> {
    let options = parse_options(&args)?;
    if args.daemon {
        return daemonize(&args);
    }
    let cluster = ClusterConfig::load(&args.config)?;
    let vfs = aspen_fsclient::connect(&cluster).await?;
    let session = fuse::mount(
        vfs.clone(),
        tokio::runtime::Handle::current(),
        &args.mountpoint,
        &options,
    )?;
    println!("mounted {} at {}", cluster.fsid, args.mountpoint.display());
    serve_until_unmounted(session, &args.mountpoint).await;
    vfs.shutdown().await;
    Ok(())
}

/// Serves until SIGINT/SIGTERM (then unmounts) or an outside unmount. A
/// mount still in use is detached and served until its last user goes, or
/// until a second signal ends its connection.
pub async fn serve_until_unmounted(session: fuser::BackgroundSession, mountpoint: &Path) {
    let mut served = tokio::task::spawn_blocking(move || session.join());
    let unmounted_outside = tokio::select! {
        _ = super::wait_for_stop_signal() => false,
        _ = &mut served => true,
    };
    if unmounted_outside {
        return;
    }
    let connection = fuse::kernel_connection(mountpoint);
    if let Err(error) = fuse::unmount(mountpoint) {
        eprintln!("unmounting {}: {error}", mountpoint.display());
    }
    if tokio::time::timeout(BUSY_NOTICE_AFTER, &mut served)
        .await
        .is_ok()
    {
        return;
    }
    eprintln!(
        "{} is still in use (open files or working directories): serving them until they go; \
         stop again to end now (they then see ENOTCONN)",
        mountpoint.display()
    );
    tokio::select! {
        _ = &mut served => return,
        _ = super::wait_for_stop_signal() => {}
    }
    match connection.map(fuse::KernelConnection::abort) {
        Some(Ok(())) => {}
        Some(Err(error)) => eprintln!("ending the mount's FUSE connection: {error}"),
        None => eprintln!("the mount's FUSE connection was not found"),
    }
    let _ = served.await;
}

/// Starts `aspen mount` without `--daemon` in its own session and waits
/// for the mount to appear.
fn daemonize(args: &MountArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = std::env::temp_dir().join(format!(
        "aspen-mount-{}.log",
        args.mountpoint.display().to_string().replace('/', "_")
    ));
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("mount")
        .arg(&args.mountpoint)
        .arg("--config")
        .arg(&args.config);
    if !args.options.is_empty() {
        command.arg("-o").arg(args.options.join(","));
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()?;
    let started = Instant::now();
    while started.elapsed() < DAEMON_MOUNT_WAIT {
        if fuse::is_mounted(&args.mountpoint) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the mount process exited ({status}); see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    anyhow::bail!(
        "no mount after {DAEMON_MOUNT_WAIT:?}; see {}",
        log_path.display()
    )
}

/// The name mount(8) runs for `mount -t aspen` (install it as a link to
/// `aspen`: `ln -s $(which aspen) /sbin/mount.aspen`).
pub const MOUNT_HELPER: &str = "mount.aspen";

/// The arguments as `aspen` understands them. Run as `mount.aspen SOURCE
/// DIR [-o OPTIONS] [-sfnv]`, that is `aspen mount DIR --config SOURCE
/// --daemon -o OPTIONS` (SOURCE being the cluster configuration file).
pub fn helper_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == MOUNT_HELPER);
    if !invoked_as {
        return args;
    }
    let mut positional = Vec::new();
    let mut options = None;
    let mut rest = args.into_iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("-o") => options = rest.next(),
            Some("-t") => drop(rest.next()),
            Some(flag) if flag.starts_with('-') => {}
            _ => positional.push(arg),
        }
    }
    let mut translated: Vec<std::ffi::OsString> = vec!["aspen".into(), "mount".into()];
    if let [source, mountpoint, ..] = positional.as_slice() {
        translated.extend([mountpoint.clone(), "--config".into(), source.clone()]);
    }
    translated.push("--daemon".into());
    if let Some(options) = options {
        translated.extend(["-o".into(), options]);
    }
    translated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_helper_translates_mount_8_arguments() {
        let args = [
            "/sbin/mount.aspen",
            "/etc/aspen/cluster.json",
            "/mnt/a",
            "-o",
            "rw,allow_other",
            "-n",
        ];
        let translated = helper_args(args.iter().map(Into::into));
        let expected = [
            "aspen",
            "mount",
            "/mnt/a",
            "--config",
            "/etc/aspen/cluster.json",
            "--daemon",
            "-o",
            "rw,allow_other",
        ];
        assert_eq!(
            translated,
            expected
                .iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        );
        let plain = ["aspen", "status"];
        assert_eq!(helper_args(plain.iter().map(Into::into)).len(), 2);
    }
}
