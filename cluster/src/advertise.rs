//! Which gossip address this node tells its peers. A peer that learns
//! `0.0.0.0`, `::` or a loopback address would send our probes to itself,
//! so those are refused unless every seed is loopback too (a test cluster
//! on one host).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::ClusterError;
use crate::config::parse_advertise;

/// Where the advertised address came from (logged at startup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertiseSource {
    /// `[cluster.network].advertise_addr` / `ENGRAM_CLUSTER_ADVERTISE_ADDR`.
    Configured,
    /// `swim_bind` names a specific address.
    BindAddress,
    /// The interface that routes to the first seed.
    RouteToSeed(SocketAddr),
}

fn refuse(addr: impl std::fmt::Display, why: &str) -> ClusterError {
    ClusterError::Advertise(format!(
        "refusing to advertise {addr} to the cluster: {why}; set [cluster.network].advertise_addr \
         in the config file or ENGRAM_CLUSTER_ADVERTISE_ADDR to an address the other nodes can reach \
         (e.g. the pod or host IP, \"10.0.0.5:7946\")"
    ))
}

/// The address of the local interface that routes to `target` (no packet
/// is sent: a connected UDP socket only asks the kernel for a route).
pub fn route_to(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

/// Decides the advertised gossip address.
///
/// `seeds` are the seeds that resolved (others are ignored here); `route`
/// finds the local address that reaches a seed ([`route_to`] in production).
pub fn choose(
    configured: &str,
    swim_bind: SocketAddr,
    seeds: &[SocketAddr],
    route: impl Fn(SocketAddr) -> io::Result<IpAddr>,
) -> Result<(SocketAddr, AdvertiseSource), ClusterError> {
    let remote_seed = seeds.iter().find(|s| !s.ip().is_loopback());
    let checked = |addr: SocketAddr, source| {
        if addr.ip().is_unspecified() {
            return Err(refuse(addr, "it is the wildcard address"));
        }
        if addr.ip().is_loopback() {
            if let Some(seed) = remote_seed {
                return Err(refuse(
                    addr,
                    &format!("it is a loopback address and seed {seed} is not"),
                ));
            }
        }
        Ok((addr, source))
    };
    if !configured.is_empty() {
        return checked(
            parse_advertise(configured, swim_bind.port())?,
            AdvertiseSource::Configured,
        );
    }
    if !swim_bind.ip().is_unspecified() {
        return checked(swim_bind, AdvertiseSource::BindAddress);
    }
    let Some(first) = seeds.first() else {
        return Err(refuse(
            swim_bind,
            "swim_bind is a wildcard and no seed resolved to find the interface that routes to the cluster",
        ));
    };
    let ip = route(*first).map_err(|e| {
        refuse(
            swim_bind,
            &format!(
                "swim_bind is a wildcard and no interface routes to the first seed {first} ({e})"
            ),
        )
    })?;
    checked(
        SocketAddr::new(ip, swim_bind.port()),
        AdvertiseSource::RouteToSeed(*first),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn no_route(_: SocketAddr) -> io::Result<IpAddr> {
        Err(io::Error::new(
            io::ErrorKind::NetworkUnreachable,
            "unreachable",
        ))
    }

    fn msg(r: Result<(SocketAddr, AdvertiseSource), ClusterError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(v) => panic!("accepted {v:?}"),
        }
    }

    #[test]
    fn wildcard_bind_without_route_is_refused_naming_both_settings() {
        let m = msg(choose(
            "",
            a("0.0.0.0:7946"),
            &[a("10.1.2.3:7946")],
            no_route,
        ));
        assert!(m.contains("[cluster.network].advertise_addr"), "{m}");
        assert!(m.contains("ENGRAM_CLUSTER_ADVERTISE_ADDR"), "{m}");
    }

    #[test]
    fn wildcard_and_loopback_are_never_advertised_to_remote_seeds() {
        let remote = [a("10.1.2.3:7946")];
        msg(choose("0.0.0.0:7946", a("0.0.0.0:7946"), &remote, no_route));
        msg(choose("::", a("0.0.0.0:7946"), &remote, no_route));
        msg(choose("127.0.0.1", a("0.0.0.0:7946"), &remote, no_route));
        msg(choose("", a("127.0.0.1:7946"), &remote, no_route));
        // The route to a remote seed can't be loopback, but if it were:
        msg(choose("", a("0.0.0.0:7946"), &remote, |_| {
            Ok(IpAddr::from([127, 0, 0, 1]))
        }));
    }

    #[test]
    fn loopback_is_fine_when_every_seed_is_loopback() {
        let local = [a("127.0.0.1:7001")];
        assert_eq!(
            choose("", a("127.0.0.1:7000"), &local, no_route).expect("ok"),
            (a("127.0.0.1:7000"), AdvertiseSource::BindAddress)
        );
    }

    #[test]
    fn configured_then_bind_then_route_to_the_first_seed() {
        let remote = [a("10.1.2.3:7946"), a("10.1.2.4:7946")];
        assert_eq!(
            choose("10.0.0.5", a("0.0.0.0:7946"), &remote, no_route).expect("ok"),
            (a("10.0.0.5:7946"), AdvertiseSource::Configured)
        );
        assert_eq!(
            choose("", a("10.0.0.6:7946"), &remote, no_route).expect("ok"),
            (a("10.0.0.6:7946"), AdvertiseSource::BindAddress)
        );
        assert_eq!(
            choose("", a("0.0.0.0:7946"), &remote, |s| {
                assert_eq!(s, a("10.1.2.3:7946"));
                Ok(IpAddr::from([10, 1, 2, 99]))
            })
            .expect("ok"),
            (
                a("10.1.2.99:7946"),
                AdvertiseSource::RouteToSeed(a("10.1.2.3:7946"))
            )
        );
    }
}
