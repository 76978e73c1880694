//! Finds where a config path sits in a TOML file, using `toml_edit`'s spans.

use std::ops::Range;

use toml_edit::{Item, Value};

use super::{FieldPath, Seg};

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a toml_edit::Table),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        }
    }

    /// The child at `seg`, with the span of its key when it has one.
    fn child(self, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match (self, seg) {
            (Node::Item(item), Seg::Key(k)) => {
                let table = item.as_table_like()?;
                let (key, child) = table.get_key_value(k)?;
                Some((Node::Item(child), key.span()))
            }
            (Node::Table(t), Seg::Key(k)) => {
                let (key, child) = t.get_key_value(k)?;
                Some((Node::Item(child), key.span()))
            }
            (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                let (key, child) = t.get_key_value(k)?;
                Some((Node::Item(child), key.span()))
            }
            (Node::Item(item), Seg::Index(i)) => {
                if let Some(a) = item.as_array() {
                    return a.get(*i).map(|v| (Node::Value(v), None));
                }
                let tables = item.as_array_of_tables()?;
                let t = tables.get(*i)?;
                Some((Node::Table(t), t.span()))
            }
            (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(|v| (Node::Value(v), None)),
            _ => None,
        }
    }
}

/// The span of the value at `path` (or of its key when `at_key`). When the path goes deeper than
/// the file (a missing field), the deepest existing part is returned: its key, so the message
/// points at the component that lacks the field.
pub fn find(doc: &toml_edit::Document<String>, path: &FieldPath, at_key: bool) -> Option<Range<usize>> {
    let mut node = Node::Item(doc.as_item());
    let mut key_span: Option<Range<usize>> = None;
    let mut best: Option<Range<usize>> = None;
    for seg in &path.0 {
        match node.child(seg) {
            Some((child, ks)) => {
                node = child;
                key_span = ks;
                best = key_span.clone().or_else(|| child.span()).or(best);
            }
            None => return best,
        }
    }
    if at_key { key_span.or_else(|| node.span()) } else { node.span().or(key_span) }
}
