//! Checks across vhosts: unique names and aliases, and a link graph that is acyclic and
//! points at vhosts that exist.

use std::collections::{HashMap, HashSet};

use super::{P, vhost_el};
use crate::config::diag::suggest;
use crate::config::model::*;
use crate::config::xml::Element;

impl P {
    pub(super) fn check_names(&mut self, root: &Element, vhosts: &[Vhost]) {
        // Names first, then aliases: a clash is reported where the alias is written.
        let mut owners: HashMap<&str, &Vhost> = HashMap::new();
        for v in vhosts {
            if let Some(other) = owners.get(v.name.as_str()) {
                let el = vhost_el(root, v);
                self.error(
                    el,
                    v.line,
                    format!(
                        "vhost name \"{}\" is used twice (first at line {})",
                        v.name, other.line
                    ),
                    "every vhost name and alias must be unique",
                );
            } else {
                owners.insert(&v.name, v);
            }
        }
        for v in vhosts {
            for a in &v.aliases {
                match owners.get(a.as_str()) {
                    Some(other) if other.line != v.line => {
                        let el = vhost_el(root, v);
                        let line = el
                            .children_named("Alias")
                            .find(|c| c.text.eq_ignore_ascii_case(a))
                            .map_or(v.line, |c| c.line);
                        self.error(
                            el,
                            line,
                            format!(
                                "alias \"{a}\" of vhost \"{}\" is already used by vhost \"{}\" (line {})",
                                v.name, other.name, other.line
                            ),
                            "every vhost name and alias must be unique; remove one",
                        );
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(a, v);
                    }
                }
            }
        }
    }

    /// VhostLink graph: unknown target, self link, cycles (all Warnings: the link just stops).
    pub(super) fn check_links(&mut self, root: &Element, vhosts: &mut [Vhost]) {
        // Normalise targets written as an alias to the vhost name.
        let mut alias_owner: HashMap<String, String> = HashMap::new();
        for v in vhosts.iter() {
            for a in &v.aliases {
                alias_owner
                    .entry(a.clone())
                    .or_insert_with(|| v.name.clone());
            }
        }
        let names: HashSet<String> = vhosts.iter().map(|v| v.name.clone()).collect();
        for v in vhosts.iter_mut() {
            if let Some(link) = &mut v.link
                && !names.contains(&link.target)
                && let Some(owner) = alias_owner.get(&link.target)
            {
                link.target = owner.clone();
            }
        }
        let next: HashMap<&str, &VhostLink> = vhosts
            .iter()
            .filter_map(|v| v.link.as_ref().map(|l| (v.name.as_str(), l)))
            .collect();
        let name_list: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
        let mut reported_cycles: HashSet<Vec<String>> = HashSet::new();
        for v in vhosts.iter() {
            let Some(link) = &v.link else { continue };
            let el = vhost_el(root, v);
            if link.target == v.name {
                self.warn(
                    el,
                    link.line,
                    format!(
                        "vhost \"{}\" links to itself; the link will never be followed",
                        v.name
                    ),
                    "link to another vhost, or remove the <VhostLink>",
                );
                continue;
            }
            if !names.contains(&link.target) {
                let fix = match suggest(&link.target, &name_list) {
                    Some(s) => format!("did you mean <VhostLink>{s}</VhostLink>?"),
                    None => format!("define <Vhost Name=\"{}\"> or fix the target", link.target),
                };
                self.warn(
                    el,
                    link.line,
                    format!(
                        "<VhostLink> target \"{}\" of vhost \"{}\" does not exist; the link will never be followed",
                        link.target, v.name
                    ),
                    fix,
                );
                continue;
            }
            // Follow the chain from v; a cycle that returns to v is reported once.
            let mut path = vec![v.name.clone()];
            let mut cur = link.target.as_str();
            loop {
                if cur == v.name {
                    let mut key = path.clone();
                    if let Some(min) = (0..key.len()).min_by_key(|&i| &key[i]) {
                        key.rotate_left(min);
                    }
                    if reported_cycles.insert(key) {
                        let chain = path
                            .iter()
                            .chain(std::iter::once(&v.name))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" → ");
                        self.warn(
                            el,
                            link.line,
                            format!(
                                "<VhostLink> cycle {chain}; the chain stops where it would loop"
                            ),
                            "remove one of the links in the cycle",
                        );
                    }
                    break;
                }
                if path.iter().any(|p| p == cur) {
                    break; // a cycle not through v: reported from its own members
                }
                path.push(cur.to_string());
                match next.get(cur) {
                    Some(l) => cur = l.target.as_str(),
                    None => break,
                }
            }
        }
    }
}
