//! The faults of the chaos suite, one per round: what each does to the cluster, how long it
//! lasts, when the cluster must be serving again (its bound, measured from the fault's start or
//! from its heal) and what must be restarted after it.

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt as _,
    path::Path,
    time::{Duration, Instant},
};

use simpleloggers::local_cluster::ProxyMode;

use crate::{segments::last_segment, Chaos};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader (restarted after the cluster serves again).
    KillLeader,
    /// SIGSTOP the leader, then SIGCONT: in odd rounds for twice its session TTL plus the
    /// lock-delay plus a second (its session expired and another node leads when it wakes), in
    /// even rounds for its TTL plus a second (past its lease and TTL, but Consul expires a session
    /// only after twice its TTL: it may go on leading).
    PauseLeader,
    /// SIGKILL a follower (restarted after the cluster serves again).
    KillFollower,
    /// Restart the dev Consul: every session, lock, key and check is gone.
    ConsulRestart,
    /// Black-hole one node's connections to Consul (the leader in odd rounds, a follower in even).
    ConsulOutageOne,
    /// Black-hole every node's connections to Consul.
    ConsulOutageAll,
    /// Partition the leader from both followers (their fetches to it are held); Consul still
    /// reaches everyone.
    LeaderPartition,
    /// Partition the two followers from each other.
    FollowerPartition,
    /// Every log write of the leader fails with ENOSPC (its fault file), then space is back.
    DiskFull,
    /// Every `fdatasync` of one node (the leader in odd rounds, a follower in even) takes longer.
    SlowSync,
    /// SIGKILL a node (the leader in odd rounds, a follower in even), leave a torn frame at its
    /// active segment's tail (half a frame, or a whole one with a bad checksum), restart it.
    TornWrite,
}

/// Whether the cluster is expected to serve while a fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Yes (after a failover, if it takes one): the longest time without acknowledgements is
    /// bounded from the fault's start.
    Start,
    /// No, by design: the bound on that gap is the fault's duration plus the bound.
    Heal,
}

/// How long the lasting faults last, and the slow disk's delay.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    /// Consul unreachable (`CHAOS_OUTAGE`, default 30 s).
    pub outage: Duration,
    /// A partition between nodes (`CHAOS_CUT`, default 10 s).
    pub cut: Duration,
    /// The full disk (`CHAOS_DISK_FULL`, default 5 s).
    pub disk_full: Duration,
    /// The slow disk (`CHAOS_SLOW_SYNC`, default 10 s).
    pub slow: Duration,
    /// Added to every `fdatasync` of the slow disk.
    pub slow_delay: Duration,
    /// The nodes' session TTL (how long the leader is paused derives from it).
    pub session_ttl: Duration,
    /// The nodes' lock-delay: every lease ends within it of the last renewal.
    pub lock_delay: Duration,
}

/// What a strike did.
pub struct Struck {
    /// When the fault began.
    pub start: Instant,
    /// When it healed (`start` for an instantaneous fault).
    pub heal: Instant,
    /// Nodes killed, to start again once the cluster serves.
    pub restart: Vec<usize>,
    /// A window in which no write may be acknowledged (every node cut off from Consul, past the
    /// longest lease).
    pub no_acks: Option<(Instant, Instant)>,
    /// What was done, for the log.
    pub note: String,
}

impl Durations {
    /// How long round `round` pauses the leader (see [`Fault::PauseLeader`]).
    pub fn pause(&self, round: usize) -> Duration {
        if round % 2 == 1 {
            2 * self.session_ttl + self.lock_delay + Duration::from_secs(1)
        } else {
            self.session_ttl + Duration::from_secs(1)
        }
    }
}

impl Fault {
    /// Every fault, in the order a run takes them.
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::KillFollower,
        Fault::ConsulRestart,
        Fault::ConsulOutageOne,
        Fault::ConsulOutageAll,
        Fault::LeaderPartition,
        Fault::FollowerPartition,
        Fault::DiskFull,
        Fault::SlowSync,
        Fault::TornWrite,
    ];

    /// Its name (`CHAOS_FAULTS` and the table).
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::PauseLeader => "pause-leader",
            Fault::KillFollower => "kill-follower",
            Fault::ConsulRestart => "consul-restart",
            Fault::ConsulOutageOne => "consul-outage-one",
            Fault::ConsulOutageAll => "consul-outage-all",
            Fault::LeaderPartition => "leader-partition",
            Fault::FollowerPartition => "follower-partition",
            Fault::DiskFull => "disk-full",
            Fault::SlowSync => "slow-sync",
            Fault::TornWrite => "torn-write",
        }
    }

    /// The faults a comma-separated list names (`all` or empty: every fault).
    ///
    /// # Errors
    /// A name that is no fault (the message lists the valid ones).
    pub fn parse_list(list: &str) -> Result<Vec<Fault>, String> {
        let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        if names.is_empty() || names == ["all"] {
            return Ok(Fault::ALL.to_vec());
        }
        names
            .iter()
            .map(|name| {
                Fault::ALL.into_iter().find(|f| f.name() == *name).ok_or_else(|| {
                    let valid: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!("CHAOS_FAULTS: unknown fault {name:?}; valid: {}", valid.join(","))
                })
            })
            .collect()
    }

    /// Whether the cluster serves during the fault.
    pub fn reference(self) -> Reference {
        match self {
            // Without Consul nobody holds a valid lease; a leader cut off from its followers
            // keeps the lock but cannot commit (acks=all, ISR never below --min-insync).
            Fault::ConsulOutageAll | Fault::LeaderPartition => Reference::Heal,
            _ => Reference::Start,
        }
    }

    /// The longest time to recover that is not a violation: every producer is acknowledged
    /// within this of the heal, and no acknowledgement is missing for longer than this (plus the
    /// fault's duration when nobody can serve during it, [`Reference::Heal`]).
    pub fn bound(self, d: &Durations) -> Duration {
        let base = Duration::from_secs(20);
        match self {
            // The leader is frozen, then (maybe) a failover.
            Fault::PauseLeader => base + d.pause(1),
            // Every node re-creates its session, then the state-loss election waits for reports.
            Fault::ConsulRestart => Duration::from_secs(30),
            _ => base,
        }
    }
}

/// Applies `fault` (round `round`, counted from 1) to the cluster whose leader is `leader`;
/// lasting faults are healed before this returns.
///
/// # Errors
/// The fault could not be applied (a process or file operation failed).
pub async fn strike(fault: Fault, chaos: &mut Chaos, round: usize, leader: usize) -> Result<Struck, String> {
    let d = chaos.durations;
    let followers: Vec<usize> = (0..chaos.cluster.len()).filter(|&i| i != leader).collect();
    // The leader in odd rounds, a follower (taking turns) in even ones.
    let alternate = if round % 2 == 1 {
        leader
    } else {
        followers[(round / 2) % followers.len()]
    };
    let now = Instant::now();
    let mut struck = Struck {
        start: now,
        heal: now,
        restart: Vec::new(),
        no_acks: None,
        note: String::new(),
    };
    let c = &mut chaos.cluster;
    match fault {
        Fault::KillLeader => {
            c.node_mut(leader).kill().await;
            struck.restart.push(leader);
            struck.note = format!("killed leader {}", c.name(leader));
        }
        Fault::KillFollower => {
            let victim = followers[round % followers.len()];
            c.node_mut(victim).kill().await;
            struck.restart.push(victim);
            struck.note = format!("killed follower {}", c.name(victim));
        }
        Fault::PauseLeader => {
            let pause = d.pause(round);
            c.node(leader).pause().await.map_err(|e| e.to_string())?;
            struck.start = Instant::now();
            tokio::time::sleep(pause).await;
            c.node(leader).resume();
            struck.heal = Instant::now();
            struck.note = format!("paused leader {} for {pause:?}", c.name(leader));
        }
        Fault::ConsulRestart => {
            c.consul_mut().kill().await;
            c.consul_mut()
                .start()
                .await
                .map_err(|e| format!("restart dev Consul: {e}"))?;
            struck.note = "dev Consul killed and restarted (empty)".into();
        }
        Fault::ConsulOutageOne | Fault::ConsulOutageAll => {
            let cut: Vec<usize> = if fault == Fault::ConsulOutageAll {
                (0..c.len()).collect()
            } else {
                vec![alternate]
            };
            for &i in &cut {
                c.consul_proxy(i)
                    .ok_or("no Consul proxies")?
                    .set_mode(ProxyMode::Blackhole);
            }
            struck.start = Instant::now();
            tokio::time::sleep(d.outage).await;
            for &i in &cut {
                c.consul_proxy(i)
                    .ok_or("no Consul proxies")?
                    .set_mode(ProxyMode::Pass);
            }
            struck.heal = Instant::now();
            let names: Vec<String> = cut.iter().map(|&i| c.name(i)).collect();
            struck.note = format!(
                "Consul black-holed for {names:?} ({:?}), leader was {}",
                d.outage,
                c.name(leader)
            );
            if fault == Fault::ConsulOutageAll {
                // The last renewal was sent before the cut: every lease ends within lock-delay
                // of it; a second more absorbs the sampling of acknowledgements.
                struck.no_acks = Some((struck.start + d.lock_delay + Duration::from_secs(1), struck.heal));
            }
        }
        Fault::LeaderPartition => {
            let leader_addr = addr_of(&c.url(leader));
            for &f in &followers {
                chaos.proxies[f].partition([leader_addr.clone()]);
            }
            struck.start = Instant::now();
            tokio::time::sleep(d.cut).await;
            for &f in &followers {
                chaos.proxies[f].heal();
            }
            struck.heal = Instant::now();
            struck.note = format!(
                "leader {} partitioned from its followers for {:?}",
                c.name(leader),
                d.cut
            );
        }
        Fault::FollowerPartition => {
            let (a, b) = (followers[0], followers[1]);
            chaos.proxies[a].partition([addr_of(&c.url(b))]);
            chaos.proxies[b].partition([addr_of(&c.url(a))]);
            struck.start = Instant::now();
            tokio::time::sleep(d.cut).await;
            chaos.proxies[a].heal();
            chaos.proxies[b].heal();
            struck.heal = Instant::now();
            struck.note = format!(
                "followers {} and {} partitioned for {:?}",
                c.name(a),
                c.name(b),
                d.cut
            );
        }
        Fault::DiskFull => {
            let file = c.fault_file(leader).ok_or("no fault files")?;
            std::fs::write(&file, "ENOSPC").map_err(|e| format!("write {}: {e}", file.display()))?;
            struck.start = Instant::now();
            tokio::time::sleep(d.disk_full).await;
            std::fs::remove_file(&file).map_err(|e| format!("remove {}: {e}", file.display()))?;
            struck.heal = Instant::now();
            struck.note = format!("leader {}'s disk full for {:?}", c.name(leader), d.disk_full);
        }
        Fault::SlowSync => {
            let file = c.fault_file(alternate).ok_or("no fault files")?;
            let content = format!("slow-sync:{}", d.slow_delay.as_millis());
            std::fs::write(&file, content).map_err(|e| format!("write {}: {e}", file.display()))?;
            struck.start = Instant::now();
            tokio::time::sleep(d.slow).await;
            std::fs::remove_file(&file).map_err(|e| format!("remove {}: {e}", file.display()))?;
            struck.heal = Instant::now();
            struck.note = format!(
                "{} ({}) syncs {:?} slower for {:?}",
                c.name(alternate),
                if alternate == leader { "leader" } else { "follower" },
                d.slow_delay,
                d.slow
            );
        }
        Fault::TornWrite => {
            c.node_mut(alternate).kill().await;
            let garble = (round / 2) % 2 == 1;
            let torn = tear_tail(c.data_dir(alternate), garble)?;
            c.restart(alternate).await;
            struck.note = format!(
                "{} ({}) killed, {torn}, restarted",
                c.name(alternate),
                if alternate == leader { "leader" } else { "follower" }
            );
        }
    }
    Ok(struck)
}

/// `host:port` of a base URL (how a forward proxy sees the destination).
fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Writes a torn frame right after the last frame of the active segment of the log in `dir` (into
/// the zeros the writer reserved there, or at the end of the file): the first half of a copy of
/// its last frame (a write cut short), or with `garble` the whole copy with its last byte flipped
/// (a write whose sectors landed but not its content). Answers what it did.
///
/// # Errors
/// The segment cannot be read or written, or holds no frame.
fn tear_tail(dir: &Path, garble: bool) -> Result<String, String> {
    let segment = last_segment(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bytes = std::fs::read(&segment).map_err(|e| format!("read {}: {e}", segment.display()))?;
    // Frames: a 4-byte little-endian length of what follows the first 8 bytes.
    let mut at = 0;
    let mut last = None;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let end = at + 8 + len;
        // A zero length is where the reserved space begins.
        if len == 0 || end > bytes.len() {
            break;
        }
        last = Some(at..end);
        at = end;
    }
    let frame = last.ok_or_else(|| format!("{} holds no frame", segment.display()))?;
    let mut tail = bytes[frame].to_vec();
    let what = if garble {
        let end = tail.len() - 1;
        tail[end] ^= 0xff;
        format!("a {}-byte frame with a bad checksum appended", tail.len())
    } else {
        tail.truncate(tail.len() / 2);
        format!("half a frame ({} bytes) appended", tail.len())
    };
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.write_all_at(&tail, at as u64))
        .map_err(|e| format!("write to {}: {e}", segment.display()))?;
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list names faults by name, in the given order; empty and `all` mean every fault;
    /// an unknown name is refused with the valid ones.
    #[test]
    fn fault_lists() {
        assert_eq!(Fault::parse_list("").unwrap(), Fault::ALL);
        assert_eq!(Fault::parse_list("all").unwrap(), Fault::ALL);
        assert_eq!(
            Fault::parse_list("torn-write, kill-leader").unwrap(),
            [Fault::TornWrite, Fault::KillLeader]
        );
        let err = Fault::parse_list("kill-leader,flood").unwrap_err();
        assert!(err.contains("\"flood\"") && err.contains("slow-sync"), "{err}");
    }

    /// A torn tail is half of a copy of the last frame, or a whole copy with a flipped byte;
    /// what was there before is untouched.
    #[test]
    fn torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000000.log");
        let frame = |len: u32, fill: u8| {
            let mut f = len.to_le_bytes().to_vec();
            f.extend([fill; 4]);
            f.extend(vec![fill; len as usize]);
            f
        };
        let original = [frame(10, 1), frame(20, 2)].concat();
        std::fs::write(&segment, &original).unwrap();
        tear_tail(dir.path(), false).unwrap();
        let after = std::fs::read(&segment).unwrap();
        assert_eq!(&after[..original.len()], &original[..]);
        assert_eq!(&after[original.len()..], &frame(20, 2)[..14]);

        std::fs::write(&segment, &original).unwrap();
        tear_tail(dir.path(), true).unwrap();
        let after = std::fs::read(&segment).unwrap();
        let mut garbled = frame(20, 2);
        *garbled.last_mut().unwrap() ^= 0xff;
        assert_eq!(&after[original.len()..], &garbled[..]);

        // In the zeros the writer reserved after the last frame, right after that frame.
        let reserved = [original.clone(), vec![0; 4096]].concat();
        std::fs::write(&segment, &reserved).unwrap();
        tear_tail(dir.path(), false).unwrap();
        let after = std::fs::read(&segment).unwrap();
        assert_eq!(after.len(), reserved.len());
        assert_eq!(&after[..original.len()], &original[..]);
        assert_eq!(&after[original.len()..original.len() + 14], &frame(20, 2)[..14]);
        assert!(after[original.len() + 14..].iter().all(|&b| b == 0));
    }
}
