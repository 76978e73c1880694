//! Typed wiring: what each component gives, given what reaches it, and the inputs that can never
//! carry anything their reader takes (e.g. `status`, which takes live events, reading
//! `trace_jsonl`, which gives traces).

use crate::event::DataType;
use crate::registry::{AnyConfig, Kind};

use super::topology::GraphError;

/// One configured component as the wiring check sees it.
pub struct Wired<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub type_name: &'a str,
    pub inputs: &'a [String],
    /// `None` when its config did not parse (reported already): it is then taken to give anything.
    pub config: Option<&'a AnyConfig>,
}

/// Finds every `inputs` entry that can never carry a kind of event its reader takes.
/// `matched[c][i]` are the components entry `i` of component `c` resolved to.
pub fn check(nodes: &[Wired<'_>], matched: &[Vec<Vec<usize>>]) -> Vec<GraphError> {
    let mut gives = Gives { nodes, matched, memo: vec![None; nodes.len()], visiting: vec![false; nodes.len()] };
    let mut errors = Vec::new();
    for (ci, node) in nodes.iter().enumerate() {
        let Some(takes) = node.config.and_then(AnyConfig::input) else {
            continue;
        };
        for (ii, producers) in matched[ci].iter().enumerate() {
            if producers.is_empty() {
                continue;
            }
            let carried = producers.iter().fold(DataType::empty(), |acc, &p| acc | gives.of(p));
            if carried.intersects(takes) {
                continue;
            }
            let from = match producers.as_slice() {
                [p] => format!("`{}` ({}) gives {}", nodes[*p].id, nodes[*p].type_name, carried),
                many => format!("`{}` ({} components) give {}", node.inputs[ii], many.len(), carried),
            };
            let fitting: Vec<String> = (0..nodes.len())
                .filter(|&p| p != ci && nodes[p].kind != Kind::Sink && gives.of(p).intersects(takes))
                .map(|p| format!("`{}`", nodes[p].id))
                .collect();
            let help = if fitting.is_empty() {
                format!(
                    "no component of this pipeline gives {takes}; add one that does (`ocpipe list` shows what each takes and gives)"
                )
            } else {
                format!("read from one that gives {takes}: {}", fitting.join(", "))
            };
            errors.push(GraphError {
                component: ci,
                input: Some(ii),
                message: format!(
                    "{} `{}` ({}) takes {takes}, but {from}: this input can never carry anything it takes",
                    node.kind, node.id, node.type_name
                ),
                help: Some(help),
            });
        }
    }
    errors
}

/// What each component gives, worked out from its inputs (memoized; a cycle, reported
/// elsewhere, gives anything).
struct Gives<'n, 'a> {
    nodes: &'n [Wired<'a>],
    matched: &'n [Vec<Vec<usize>>],
    memo: Vec<Option<DataType>>,
    visiting: Vec<bool>,
}

impl Gives<'_, '_> {
    fn of(&mut self, i: usize) -> DataType {
        if let Some(t) = self.memo[i] {
            return t;
        }
        if self.visiting[i] {
            return DataType::ANY;
        }
        self.visiting[i] = true;
        let gives = match self.nodes[i].config {
            None => DataType::ANY,
            Some(AnyConfig::Source(c)) => c.outputs(),
            Some(AnyConfig::Sink(_)) => DataType::empty(),
            Some(AnyConfig::Transform(c)) => {
                let producers: Vec<usize> = self.matched[i].iter().flatten().copied().collect();
                let reaching = producers.into_iter().fold(DataType::empty(), |acc, p| acc | self.of(p));
                let takes = c.input();
                // Fed nothing it takes (an error at its inputs): judge its readers as if it were
                // fed well, so one mistake is reported once.
                let fed = if reaching.intersects(takes) { reaching & takes } else { takes };
                c.outputs(fed)
            }
        };
        self.visiting[i] = false;
        self.memo[i] = Some(gives);
        gives
    }
}
