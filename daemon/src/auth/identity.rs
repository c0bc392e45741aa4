//! Client certificates as identities: CN is the user, each O a group (as kube-apiserver).
//! Node certificates (O `system:nodes`, CN the node name) are `system:node:NAME`.
use super::{UserInfo, NODES};

/// The identity a verified client certificate (DER) speaks for; None when it has no CN.
pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if cn.is_empty() {
        return None;
    }
    let groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok()).map(String::from).collect();
    let name = if groups.iter().any(|g| g == NODES) && !cn.starts_with("system:node:") {
        format!("system:node:{cn}")
    } else {
        cn
    };
    Some(UserInfo::new(name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        // One attribute per type in rcgen: a second O goes in under its OID.
        for (i, o) in orgs.iter().enumerate() {
            let ty =
                if i == 0 { rcgen::DnType::OrganizationName } else { rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]) };
            p.distinguished_name.push(ty, *o);
        }
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn cn_is_the_user_and_o_the_groups() {
        let u = from_certificate(&cert("alice", &["dev", "ops"])).expect("user");
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["dev", "ops", "system:authenticated"]);
        let admin = from_certificate(&cert("admin", &["system:masters"])).expect("admin");
        assert!(admin.in_group("system:masters"));
        let node = from_certificate(&cert("n1", &["system:nodes"])).expect("node");
        assert_eq!(node.name, "system:node:n1");
        assert!(from_certificate(&cert("", &["x"])).is_none());
        assert!(from_certificate(b"not a certificate").is_none());
    }
}
