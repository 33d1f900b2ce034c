//! Cluster setup and management with the verbs and arguments of
//! NethSecurity's `ns-ha-config` (`ha-agent cluster <verb> ...`), all run on
//! the primary:
//!
//! ```text
//! check-primary-node <lan_if>
//! check-backup-node <backup_ip> <lan_if>          (join token: prompt or --token-file)
//! init-primary-node <primary_ip> <backup_ip> <vip_cidr> <lan_if>
//! init-backup-node <lan_if>                        (join token: prompt or --token-file)
//! add-lan-interface <primary_ip> <backup_ip> <vip_cidr>
//! add-vip <if> <vip_cidr> / remove-vip <if> <vip_cidr> / remove-interface <if>
//! show-config / status
//! ```
//!
//! Where the seed pipes the backup's root password into an SSH session, we
//! use a one-time join token: the secondary prints it (`join-token`, valid
//! for an hour by default) while its agent waits to be joined; the primary
//! and the secondary run the control channel's handshake (ephemeral X25519
//! bound to a key derived from the token), and the cluster key travels
//! encrypted under that session, once. After the join the token is gone and
//! everything uses keys derived from the cluster key.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{
    config::{ClusterRole, Config, VipConfig, parse_vip},
    control::{
        channel::{self, Request, Response},
        host::{self, NodeInfo},
        join,
        local::{self, LocalRequest},
    },
    paths::{self, StateFile},
};

/// Default TCP port of the cluster control channel (also the join port).
pub const CONTROL_PORT: u16 = 7789;
/// State sync port set up by `init-primary-node`.
pub const SYNC_PORT: u16 = 7788;
/// VRID of the cluster's VRRP instance.
pub const VRID: u8 = 51;

/// Reads the join token: from `file` if given (the backup's `join.token`
/// itself will do), else at a prompt without echo when stdin is a
/// terminal, else from stdin (scripts: `< file`). Never from the command
/// line, which would leave it in the shell history and in `ps`.
fn read_token(file: Option<&Path>) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let text = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the join token from {}", f.display()))?,
        None if std::io::stdin().is_terminal() => rpassword::prompt_password(
            "join token (printed by `ha-agent cluster join-token` on the backup): ",
        )
        .context("reading the join token at the prompt")?,
        None => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .context("reading the join token from stdin")?;
            t
        }
    };
    let token = text.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(token) = token else {
        bail!(
            "no join token given: on the backup node run `ha-agent cluster join-token`, then give it \
             here at the prompt or with --token-file FILE"
        );
    };
    join::check_secret(token)?;
    Ok(token.to_owned())
}

/// Makes a one-time join token for this node, valid for `ttl`, and prints
/// it.
pub fn join_token(config_path: &Path, ttl: Duration) -> anyhow::Result<()> {
    if ttl.is_zero() || ttl > join::MAX_TTL {
        bail!(
            "--ttl {}: give a validity between 1 s and {}",
            humantime::format_duration(ttl),
            humantime::format_duration(join::MAX_TTL)
        );
    }
    let token = join::JoinToken::generate(ttl, SystemTime::now())?;
    let path = StateFile::JoinToken.path(config_path);
    paths::write_atomically(&path, token.file_text().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", token.secret);
    eprintln!(
        "join token written to {} (used once, valid for {}). On the primary, give it at the prompt of\n  \
         ha-agent cluster check-backup-node <backup_ip> <lan_if>\n  ha-agent cluster init-backup-node <lan_if>\n\
         or copy that file there and add --token-file FILE.",
        path.display(),
        humantime::format_duration(ttl),
    );
    Ok(())
}

/// The primary's configuration, refusing on a secondary.
fn primary_config(config_path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(config_path)?;
    match &config.cluster {
        Some(c) if c.role == ClusterRole::Secondary => bail!(
            "this node is the secondary: make configuration changes on the primary ({}); they are synchronized here",
            c.primary
        ),
        Some(_) => Ok(config),
        None => bail!(
            "{} has no [cluster] section: run `ha-agent cluster init-primary-node` first",
            config_path.display()
        ),
    }
}

/// Validates and writes a configuration, then asks the running agent (if
/// any) to reload it. A configuration that fails validation is not written.
async fn save_and_reload(config_path: &Path, config: &Config) -> anyhow::Result<()> {
    let text = toml::to_string(config)?;
    Config::parse(&text, config_path)?;
    paths::write_atomically(config_path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!("wrote {}", config_path.display());
    match local::request(&config.instance, LocalRequest::Reload).await {
        Ok(r) if r.ok => println!("agent reloaded: {}", r.message),
        Ok(r) => bail!("the running agent did not apply it: {}", r.message),
        Err(_) => println!(
            "no agent running for instance {}: start it (`systemctl start ha-agent`) to apply",
            config.instance
        ),
    }
    Ok(())
}

fn check_vip(iface: &str, vip: &str) -> anyhow::Result<VipConfig> {
    let v = VipConfig {
        iface: iface.to_owned(),
        address: vip.to_owned(),
    };
    parse_vip(&v).map_err(|p| anyhow::anyhow!("vip {vip} on {iface}: {p}"))?;
    if !vip.contains('/') {
        bail!("vip {vip} on {iface}: give a prefix length, e.g. {vip}/24");
    }
    Ok(v)
}

async fn peer_info(peer: Ipv4Addr, port: u16, key: &[u8; 32]) -> anyhow::Result<NodeInfo> {
    match channel::call(SocketAddr::from((peer, port)), key, &Request::Info).await? {
        Response::Info(i) => Ok(i),
        Response::Refused(r) => bail!("{peer} refused: {r}"),
        other => bail!("{peer}: unexpected answer {other:?}"),
    }
}

/// The cluster key (sent, encrypted, once at the join).
fn sync_key(config: &Config) -> anyhow::Result<[u8; 32]> {
    let path = config
        .ha
        .sync_key_file
        .as_ref()
        .context("the configuration has no ha.sync_key_file")?;
    crate::sync::key::read_key(path)
}

/// `check-primary-node <lan_if>`.
pub fn check_primary_node(lan_if: &str) -> anyhow::Result<()> {
    let me = host::info(true)?;
    let problems = me.check_iface("primary", lan_if);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let i = me.iface(lan_if).expect("checked above");
    println!(
        "primary node: {lan_if} is up with static address {}: OK (ha-agent {})",
        i.addrs
            .iter()
            .filter(|a| a.is_static)
            .map(|a| format!("{}/{}", a.addr, a.prefix))
            .collect::<Vec<_>>()
            .join(", "),
        me.version
    );
    Ok(())
}

/// `check-backup-node <backup_ip> <lan_if>`, with the join token.
pub async fn check_backup_node(
    backup_ip: Ipv4Addr,
    lan_if: &str,
    token_file: Option<&Path>,
) -> anyhow::Result<NodeInfo> {
    let token = read_token(token_file)?;
    let backup = peer_info(backup_ip, CONTROL_PORT, &channel::join_key(&token))
        .await
        .with_context(|| format!("backup node {backup_ip} is not reachable for the join (is its agent waiting, with a join token?)"))?;
    let me = host::info(true)?;
    let mut problems = backup.check_iface("backup", lan_if);
    if backup.version != me.version {
        problems.push(format!(
            "version differs: primary ha-agent {}, backup {}",
            me.version, backup.version
        ));
    }
    for i in me.interfaces.iter().filter(|i| i.name != "lo") {
        if backup.iface(&i.name).is_none() {
            problems.push(format!(
                "interface {} exists here but not on the backup (the nodes need the same interface names)",
                i.name
            ));
        }
    }
    if backup.configured {
        problems.push("the backup is already part of a cluster".into());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    println!(
        "backup node {backup_ip} ({}): reachable, ha-agent {}, {lan_if} static, same interfaces: OK",
        backup.hostname, backup.version
    );
    Ok(backup)
}

/// `init-primary-node <primary_ip> <backup_ip> <vip_cidr> <lan_if>`.
pub async fn init_primary_node(
    config_path: &Path,
    instance: &str,
    primary_ip: Ipv4Addr,
    backup_ip: Ipv4Addr,
    vip: &str,
    lan_if: &str,
    advert_ms: u64,
) -> anyhow::Result<()> {
    if Config::load(config_path)
        .ok()
        .and_then(|c| c.cluster)
        .is_some_and(|c| c.role == ClusterRole::Secondary)
    {
        bail!("this node is already the secondary of a cluster");
    }
    let me = host::info(true)?;
    let ha_if = me
        .iface_with(primary_ip)
        .with_context(|| format!("{primary_ip} is not an address of this node"))?
        .name
        .clone();
    let problems = me.check_iface("primary", lan_if);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let vip = check_vip(lan_if, vip)?;
    let key_path = StateFile::ClusterKey.path(config_path);
    if !key_path.exists() {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        paths::write_atomically(&key_path, &key, 0o600)
            .with_context(|| format!("writing {}", key_path.display()))?;
        println!("made the cluster key {}", key_path.display());
    }
    let text = format!(
        r#"instance = "{instance}"

[ha]
interface = "{ha_if}"
address = "{primary_ip}"
peers = ["{backup_ip}"]
mgmt = ["tcp/22"]
sync_port = {SYNC_PORT}
sync_key_file = "{key}"

[cluster]
role = "primary"
primary = "{primary_ip}"

[[group]]
name = "cluster"

[[group.vrrp]]
name = "{lan_if}"
vrid = {VRID}
priority = 200
advert_interval_ms = {advert_ms}
preempt = true
vips = [{{ iface = "{lan_if}", address = "{vip}" }}]
"#,
        key = key_path.display(),
        vip = vip.address,
    );
    let config = Config::parse(&text, config_path)?;
    save_and_reload(config_path, &config).await?;
    println!(
        "primary initialized: HA on {ha_if} ({primary_ip} <-> {backup_ip}), VIP {} on {lan_if}, VRRP VRID {VRID} every {advert_ms} ms, state sync on UDP {SYNC_PORT}",
        vip.address
    );
    Ok(())
}

/// `init-backup-node <lan_if>`, with the join token: configures the backup
/// from here.
pub async fn init_backup_node(
    config_path: &Path,
    lan_if: &str,
    files_root: Option<PathBuf>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let primary = primary_config(config_path)?;
    let token = read_token(token_file)?;
    let backup_ip = *primary.ha.peers.first().context("no peer in ha.peers")?;
    let join = channel::join_key(&token);
    let backup = peer_info(backup_ip, CONTROL_PORT, &join)
        .await
        .with_context(|| format!("backup node {backup_ip} is not reachable for the join"))?;
    let ha_if = backup
        .iface_with(backup_ip)
        .with_context(|| format!("{backup_ip} is not an address of the backup node"))?
        .name
        .clone();
    let problems = backup.check_iface("backup", lan_if);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let mut config = primary.clone();
    config.instance = backup
        .instance
        .clone()
        .unwrap_or_else(|| primary.instance.clone());
    config.ha.interface = ha_if.clone();
    config.ha.address = backup_ip;
    config.ha.peers = vec![primary.ha.address];
    config.metrics_listen = None;
    if let Some(c) = &mut config.cluster {
        c.role = ClusterRole::Secondary;
        c.priority = Some(100);
        c.files_root = files_root;
    }
    let key = sync_key(&primary)?;
    let text = toml::to_string(&config)?;
    Config::parse(&text, config_path).context("the backup's configuration")?;
    match channel::call(
        SocketAddr::from((backup_ip, CONTROL_PORT)),
        &join,
        &Request::Join {
            config: text,
            key: key.to_vec(),
        },
    )
    .await?
    {
        Response::Done { .. } => {}
        Response::Refused(r) => bail!("backup node refused the join: {r}"),
        other => bail!("backup node: unexpected answer {other:?}"),
    }
    println!(
        "backup node {backup_ip} ({}) initialized: HA on {ha_if}, priority 100; the cluster key was sent encrypted and the join token is spent. Configuration changes made here are synced to it.",
        backup.hostname
    );
    Ok(())
}

fn first_instance(config: &mut Config) -> anyhow::Result<&mut crate::config::InstanceConfig> {
    config
        .groups
        .first_mut()
        .and_then(|g| g.instances.first_mut())
        .context("the configuration has no VRRP instance")
}

/// `add-lan-interface <primary_ip> <backup_ip> <vip_cidr>`.
pub async fn add_lan_interface(
    config_path: &Path,
    primary_ip: Ipv4Addr,
    backup_ip: Ipv4Addr,
    vip: &str,
) -> anyhow::Result<()> {
    let mut config = primary_config(config_path)?;
    let me = host::info(true)?;
    let iface = me
        .iface_with(primary_ip)
        .with_context(|| format!("{primary_ip} is not an address of this node"))?
        .name
        .clone();
    let problems = me.check_iface("primary", &iface);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let port = config
        .cluster
        .as_ref()
        .map_or(CONTROL_PORT, |c| c.control_port);
    let peer = *config.ha.peers.first().context("no peer")?;
    let control = crate::sync::key::derive(&sync_key(&config)?, crate::sync::key::Purpose::Control);
    let backup = peer_info(peer, port, &control)
        .await
        .context("asking the backup about its interfaces")?;
    match backup.iface_with(backup_ip) {
        Some(i) if i.name == iface => {}
        Some(i) => bail!(
            "{backup_ip} is on {} on the backup but {primary_ip} is on {iface} here: the interfaces must match",
            i.name
        ),
        None => bail!("{backup_ip} is not an address of the backup node"),
    }
    let problems = backup.check_iface("backup", &iface);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let v = check_vip(&iface, vip)?;
    let inst = first_instance(&mut config)?;
    if inst.vips.iter().any(|x| x.iface == iface) {
        bail!("{iface} is already part of the cluster (add VIPs with add-vip)");
    }
    inst.vips.push(v);
    save_and_reload(config_path, &config).await?;
    println!("added LAN interface {iface} ({primary_ip} / {backup_ip}) with VIP {vip}");
    Ok(())
}

/// `add-vip <if> <vip_cidr>`.
pub async fn add_vip(config_path: &Path, iface: &str, vip: &str) -> anyhow::Result<()> {
    let mut config = primary_config(config_path)?;
    if host::info(true)?.iface(iface).is_none() {
        bail!("interface {iface} does not exist on this node");
    }
    let v = check_vip(iface, vip)?;
    let addr = parse_vip(&v).map_err(anyhow::Error::msg)?.addr;
    if config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| i.parsed_vips())
        .any(|x| x.addr == addr)
    {
        bail!("VIP {addr} is already configured");
    }
    first_instance(&mut config)?.vips.push(v);
    save_and_reload(config_path, &config).await?;
    println!("added VIP {vip} on {iface}");
    Ok(())
}

/// `remove-vip <if> <vip_cidr>`.
pub async fn remove_vip(config_path: &Path, iface: &str, vip: &str) -> anyhow::Result<()> {
    let mut config = primary_config(config_path)?;
    let mut found = false;
    for g in &mut config.groups {
        for i in &mut g.instances {
            let before = i.vips.len();
            i.vips.retain(|v| !(v.iface == iface && v.address == vip));
            found |= i.vips.len() != before;
        }
    }
    if !found {
        bail!("VIP {vip} on {iface} is not configured");
    }
    save_and_reload(config_path, &config).await?;
    println!("removed VIP {vip} from {iface}");
    Ok(())
}

/// `remove-interface <if>`.
pub async fn remove_interface(config_path: &Path, iface: &str) -> anyhow::Result<()> {
    let mut config = primary_config(config_path)?;
    if config.ha.interface == iface {
        bail!("{iface} carries the HA traffic; it cannot be removed from the cluster");
    }
    let mut removed = 0;
    for g in &mut config.groups {
        for i in &mut g.instances {
            let before = i.vips.len();
            i.vips.retain(|v| v.iface != iface);
            removed += before - i.vips.len();
        }
    }
    config.data_interfaces.retain(|d| d != iface);
    if removed == 0 {
        bail!("interface {iface} is not part of the cluster");
    }
    save_and_reload(config_path, &config).await?;
    println!("removed interface {iface} ({removed} VIPs) from the cluster");
    Ok(())
}

/// `show-config`.
pub fn show_config(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let Some(c) = &config.cluster else {
        bail!("{} has no [cluster] section", config_path.display());
    };
    println!("role: {} (primary {})", c.role.as_str(), c.primary);
    println!(
        "HA link: {} {} <-> {}",
        config.ha.interface,
        config.ha.address,
        config.ha.peers_text()
    );
    println!(
        "state sync: UDP {} (key {})",
        config.ha.sync_port,
        config
            .ha
            .sync_key_file
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    for g in &config.groups {
        for i in &g.instances {
            let prio = c.priority.unwrap_or(i.priority);
            println!(
                "group {} VRRP {} VRID {} priority {prio} every {} ms, preempt {}",
                g.name, i.name, i.vrid, i.advert_interval_ms, i.preempt
            );
            for v in &i.vips {
                println!("  VIP {} on {}", v.address, v.iface);
            }
        }
    }
    for f in &c.sync_files {
        println!("synced file: {}", f.display());
    }
    if let Some(h) = &c.reload_hook {
        println!("reload hook: {h}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--token-file` takes the backup's own token file (token, then its
    /// expiry) or a file holding just the token; anything else is named.
    #[test]
    fn the_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("ha-agent-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = join::JoinToken::generate(join::DEFAULT_TTL, SystemTime::now()).unwrap();
        let file = dir.join("join.token");
        std::fs::write(&file, t.file_text()).unwrap();
        assert_eq!(read_token(Some(&file)).unwrap(), t.secret);
        std::fs::write(&file, format!("\n  {}  \n", t.secret)).unwrap();
        assert_eq!(read_token(Some(&file)).unwrap(), t.secret);
        std::fs::write(&file, "not a token\n").unwrap();
        let e = read_token(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("expected 32 hex digits"), "{e}");
        std::fs::write(&file, "").unwrap();
        let e = read_token(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("no join token given"), "{e}");
        let e = read_token(Some(&dir.join("missing")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reading the join token from"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
