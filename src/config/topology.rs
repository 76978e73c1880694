//! Graph checks on the configured components: input resolution (with globs), cycles, shape.

use std::collections::{BTreeSet, HashMap};

use globset::Glob;

use crate::registry::Kind;

pub struct Node<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub inputs: &'a [String],
}

/// A problem found in the graph: which component, which input (if any), what, and what to do.
pub struct GraphError {
    pub component: usize,
    pub input: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

pub struct Checked {
    /// Resolved input ids per component.
    pub inputs: Vec<Vec<String>>,
    /// Per component, per `inputs` entry: the indexes of the components it matched.
    pub matched: Vec<Vec<Vec<usize>>>,
    pub errors: Vec<GraphError>,
    /// Components whose output nobody reads.
    pub unused: Vec<usize>,
}

pub fn check(nodes: &[Node<'_>]) -> Checked {
    let mut errors = Vec::new();
    let producers: Vec<&str> = nodes.iter().filter(|n| n.kind != Kind::Sink).map(|n| n.id).collect();
    let kind_of: HashMap<&str, Kind> = nodes.iter().map(|n| (n.id, n.kind)).collect();
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut resolved = Vec::with_capacity(nodes.len());
    let mut matched_by_entry = Vec::with_capacity(nodes.len());

    for (ci, node) in nodes.iter().enumerate() {
        let mut ids: Vec<String> = Vec::new();
        let mut entries: Vec<Vec<usize>> = vec![Vec::new(); node.inputs.len()];
        if node.kind != Kind::Source && node.inputs.is_empty() {
            errors.push(GraphError {
                component: ci,
                input: None,
                message: format!("{} `{}` has no inputs", node.kind, node.id),
                help: Some(format!("add `inputs = [\"…\"]` naming one of: {}", producers.join(", "))),
            });
        }
        for (ii, pattern) in node.inputs.iter().enumerate() {
            let is_glob = pattern.contains(['*', '?', '[']);
            let matched: Vec<&str> = if is_glob {
                match Glob::new(pattern) {
                    Ok(g) => {
                        let m = g.compile_matcher();
                        producers.iter().copied().filter(|p| *p != node.id && m.is_match(p)).collect()
                    }
                    Err(e) => {
                        errors.push(GraphError {
                            component: ci,
                            input: Some(ii),
                            message: format!("input pattern `{pattern}` is not a valid glob: {e}"),
                            help: Some("use `*` and `?` wildcards, e.g. `traces_*`".into()),
                        });
                        continue;
                    }
                }
            } else if kind_of.get(pattern.as_str()) == Some(&Kind::Sink) {
                errors.push(GraphError {
                    component: ci,
                    input: Some(ii),
                    message: format!("input `{pattern}` is a sink, and sinks have no output"),
                    help: Some(format!("read from a source or transform: {}", producers.join(", "))),
                });
                continue;
            } else if kind_of.contains_key(pattern.as_str()) {
                vec![pattern.as_str()]
            } else {
                Vec::new()
            };
            if matched.is_empty() {
                let close = crate::registry::suggest(pattern, producers.iter().copied());
                let help = match close.first() {
                    Some(c) => format!("did you mean `{c}`? components that can be inputs: {}", producers.join(", ")),
                    None => format!("components that can be inputs: {}", producers.join(", ")),
                };
                let what = if is_glob { "input pattern matches no component" } else { "unknown input" };
                errors.push(GraphError {
                    component: ci,
                    input: Some(ii),
                    message: format!("{what} `{pattern}` for {} `{}`", node.kind, node.id),
                    help: Some(help),
                });
            }
            entries[ii] = matched.iter().map(|m| index[m]).collect();
            for m in matched {
                if !ids.iter().any(|x| x == m) {
                    ids.push(m.to_string());
                }
            }
        }
        resolved.push(ids);
        matched_by_entry.push(entries);
    }

    // Cycles: depth-first search over the input edges.
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on stack, 2 done
    let mut stack: Vec<usize> = Vec::new();
    let mut seen_cycles: BTreeSet<Vec<usize>> = BTreeSet::new();
    fn visit(
        v: usize,
        resolved: &[Vec<String>],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
        cycles: &mut BTreeSet<Vec<usize>>,
    ) {
        state[v] = 1;
        stack.push(v);
        for input in &resolved[v] {
            let Some(&u) = index.get(input.as_str()) else {
                continue;
            };
            match state[u] {
                0 => visit(u, resolved, index, state, stack, cycles),
                1 => {
                    let start = stack.iter().position(|&x| x == u).unwrap();
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    let min = cycle.iter().enumerate().min_by_key(|(_, x)| **x).unwrap().0;
                    cycle.rotate_left(min);
                    cycles.insert(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state[v] = 2;
    }
    for v in 0..nodes.len() {
        if state[v] == 0 {
            visit(v, &resolved, &index, &mut state, &mut stack, &mut seen_cycles);
        }
    }
    for cycle in seen_cycles {
        // Edges run input -> consumer; print the chain in the direction events flow.
        let mut chain: Vec<&str> = cycle.iter().rev().map(|&i| nodes[i].id).collect();
        chain.push(chain[0]);
        let first = *cycle.last().unwrap();
        errors.push(GraphError {
            component: first,
            input: None,
            message: format!("cycle: {}", chain.join(" -> ")),
            help: Some("events would loop forever; remove one of these inputs".into()),
        });
    }

    if !nodes.iter().any(|n| n.kind == Kind::Source) && !nodes.is_empty() {
        errors.push(GraphError {
            component: 0,
            input: None,
            message: "the pipeline has no source".into(),
            help: Some("add a `[sources.ID]` table; `ocpipe list` shows the source types".into()),
        });
    }

    let consumed: BTreeSet<&str> = resolved.iter().flatten().map(String::as_str).collect();
    let unused = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.kind != Kind::Sink && !consumed.contains(n.id))
        .map(|(i, _)| i)
        .collect();
    Checked { inputs: resolved, matched: matched_by_entry, errors, unused }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_globs_and_finds_cycles() {
        let (a, b, c, none) = (v(&["src_*"]), v(&["b_t", "a_t"]), v(&["a_t"]), v(&[]));
        let nodes = [
            Node { id: "src_1", kind: Kind::Source, inputs: &none },
            Node { id: "src_2", kind: Kind::Source, inputs: &none },
            Node { id: "a_t", kind: Kind::Transform, inputs: &b },
            Node { id: "b_t", kind: Kind::Transform, inputs: &c },
            Node { id: "out", kind: Kind::Sink, inputs: &a },
        ];
        let checked = check(&nodes);
        assert_eq!(checked.inputs[4], v(&["src_1", "src_2"]));
        let msgs: Vec<_> = checked.errors.iter().map(|e| e.message.as_str()).collect();
        assert!(msgs.contains(&"cycle: a_t -> b_t -> a_t") || msgs.contains(&"cycle: b_t -> a_t -> b_t"), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("cycle: a_t -> a_t")), "{msgs:?}");
    }

    #[test]
    fn unknown_inputs_list_candidates() {
        let (x, none) = (v(&["tracez", "nothing_*"]), v(&[]));
        let nodes = [
            Node { id: "traces", kind: Kind::Source, inputs: &none },
            Node { id: "out", kind: Kind::Sink, inputs: &x },
        ];
        let checked = check(&nodes);
        assert_eq!(checked.errors.len(), 2);
        assert!(checked.errors[0].message.contains("unknown input `tracez`"));
        assert!(checked.errors[0].help.as_ref().unwrap().contains("did you mean `traces`?"));
        assert!(checked.errors[1].message.contains("matches no component"));
    }
}
