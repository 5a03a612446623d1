//! A tiny XML DOM for configuration files, built on quick-xml's streaming reader.
//!
//! Every element and attribute remembers the file and line it came from, so that the
//! parser can point at the exact place of a problem. Comments, the `<?xml ...?>` prolog,
//! processing instructions and `<!DOCTYPE>` are skipped. Text is unescaped (predefined
//! entities and character references), CDATA is kept verbatim, and the text of an
//! element is the concatenation of its direct text pieces, trimmed.

use std::path::Path;
use std::sync::Arc;

use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::events::attributes::AttrError;
use quick_xml::reader::Reader;

use super::diag::Diagnostic;

/// One attribute: `(name, value, line)`.
pub type Attr = (String, String, u32);

/// One XML element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Tag name as written.
    pub name: String,
    /// Attributes in document order: `(name, unescaped value, line)`.
    pub attrs: Vec<Attr>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Direct text content (all pieces joined), unescaped and trimmed.
    pub text: String,
    /// Line (1-based) of the start tag.
    pub line: u32,
    /// File the element was read from (elements inherited from `<VHostDefault>` keep
    /// pointing at `server.xml`).
    pub file: Arc<Path>,
}

impl Element {
    /// The value and line of attribute `name` (exact, case-sensitive match).
    pub fn attr(&self, name: &str) -> Option<(&str, u32)> {
        self.attrs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, l)| (v.as_str(), *l))
    }

    /// Children named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// Maps byte offsets to 1-based line numbers.
struct Lines {
    /// Byte offset of every `\n`.
    newlines: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        Lines {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    fn line(&self, offset: usize) -> u32 {
        let before = self.newlines.partition_point(|&nl| nl < offset);
        u32::try_from(before + 1).unwrap_or(u32::MAX)
    }
}

/// An element being built (its end tag not yet seen).
struct Open {
    el: Element,
    text: String,
}

/// Offset of `inner` within `outer` when `inner` is a sub-slice of it.
fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let start = outer.as_ptr() as usize;
    let p = inner.as_ptr() as usize;
    (p >= start && p <= start + outer.len()).then(|| p - start)
}

fn attr_problem(e: &AttrError) -> (usize, String) {
    match e {
        AttrError::ExpectedEq(p) => (
            *p,
            "an attribute name must be followed by `=` and a quoted value".to_string(),
        ),
        AttrError::ExpectedValue(p) => (*p, "`=` must be followed by a quoted value".to_string()),
        AttrError::UnquotedValue(p) => (
            *p,
            "attribute value is not quoted (write Name=\"value\")".to_string(),
        ),
        AttrError::ExpectedQuote(p, q) => (
            *p,
            format!("attribute value has no closing quote `{}`", *q as char),
        ),
        AttrError::Duplicated(p, _) => (*p, "the same attribute is written twice".to_string()),
    }
}

/// Parses `text` (the contents of `file`) into its root element.
///
/// Returns an Error diagnostic with the line of the first problem when the text is not
/// well-formed XML.
pub fn parse(text: &str, file: &Path) -> Result<Element, Diagnostic> {
    let file: Arc<Path> = Arc::from(file);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = Lines::new(text);
    let err = |line: u32, msg: String, fix: &str| {
        Diagnostic::error(file.to_path_buf(), line, msg, fix.to_string())
    };

    let mut reader = Reader::from_str(text);
    {
        let cfg = reader.config_mut();
        cfg.check_end_names = false; // checked below, with better messages
        cfg.expand_empty_elements = false;
    }

    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Element> = None;

    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let pos = usize::try_from(reader.error_position()).unwrap_or(start);
                return Err(err(
                    lines.line(pos),
                    format!("malformed XML: {e}"),
                    "fix the markup at this line (every <Tag> needs a matching </Tag> or must be written <Tag/>)",
                ));
            }
        };
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                let is_empty = matches!(event, Event::Empty(_));
                let line = lines.line(start);
                let name = s.name().as_ref().to_string();
                if stack.is_empty() && root.is_some() {
                    return Err(err(
                        line,
                        format!("a second top-level element <{name}> after the root element"),
                        "an XML file has exactly one root element; move this element inside it",
                    ));
                }
                let mut attrs = Vec::new();
                for a in s.attributes() {
                    match a {
                        Ok(a) => {
                            let key = a.key.as_ref();
                            let aline = offset_in(text, key).map(|o| lines.line(o)).unwrap_or(line);
                            let value =
                                a.normalized_value(XmlVersion::Implicit1_0).map_err(|e| {
                                    err(
                                        aline,
                                        format!("bad value of attribute {key} in <{name}>: {e}"),
                                        "escape `&` as &amp; and `<` as &lt; in attribute values",
                                    )
                                })?;
                            attrs.push((key.to_string(), value.into_owned(), aline));
                        }
                        Err(e) => {
                            let (pos, what) = attr_problem(&e);
                            let aline = offset_in(text, s)
                                .map(|o| lines.line(o + pos))
                                .unwrap_or(line);
                            return Err(err(
                                aline,
                                format!("bad attribute in <{name}>: {what}"),
                                "write attributes as Name=\"value\", each name once",
                            ));
                        }
                    }
                }
                let el = Element {
                    name,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                    line,
                    file: file.clone(),
                };
                if is_empty {
                    match stack.last_mut() {
                        Some(parent) => parent.el.children.push(el),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(Open {
                        el,
                        text: String::new(),
                    });
                }
            }
            Event::End(ref e) => {
                let line = lines.line(start);
                let name = e.name().as_ref().to_string();
                let Some(open) = stack.pop() else {
                    return Err(err(
                        line,
                        format!("end tag </{name}> without a matching start tag"),
                        "remove it or add the missing start tag",
                    ));
                };
                if open.el.name != name {
                    return Err(err(
                        line,
                        format!(
                            "end tag </{name}> does not match <{}> opened at line {}",
                            open.el.name, open.el.line
                        ),
                        &format!("close <{0}> with </{0}> first", open.el.name),
                    ));
                }
                let mut el = open.el;
                el.text = open.text.trim().to_string();
                match stack.last_mut() {
                    Some(parent) => parent.el.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&content),
                    None => {
                        if !content.trim().is_empty() {
                            let off = content.len() - content.trim_start().len();
                            return Err(err(
                                lines.line(start + off),
                                format!(
                                    "text \"{}\" outside the root element",
                                    shorten(content.trim())
                                ),
                                "put all settings inside the root element, or turn notes into <!-- comments -->",
                            ));
                        }
                    }
                }
            }
            Event::CData(c) => {
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let line = lines.line(start);
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    Ok(None) => {
                        let name: &str = &r;
                        match quick_xml::escape::resolve_predefined_entity(name) {
                            Some(s) => s.to_string(),
                            None => {
                                return Err(err(
                                    line,
                                    format!("unknown entity &{name};"),
                                    "use &amp; &lt; &gt; &quot; &apos; or a character reference such as &#38;",
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        return Err(err(
                            line,
                            format!("bad character reference: {e}"),
                            "write a valid reference such as &#38; or &#x26;",
                        ));
                    }
                };
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&resolved),
                    None => {
                        return Err(err(
                            line,
                            "entity reference outside the root element".to_string(),
                            "remove it",
                        ));
                    }
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }

    if let Some(open) = stack.last() {
        return Err(err(
            open.el.line,
            format!(
                "<{}> opened here is never closed (the file ends first)",
                open.el.name
            ),
            &format!("add </{}> where the element ends", open.el.name),
        ));
    }
    root.ok_or_else(|| {
        err(
            1,
            "no root element: the file is empty or holds only comments".to_string(),
            "write the root element (<Server>...</Server> or <Vhosts>...</Vhosts>)",
        )
    })
}

/// The first 40 characters of `s` (for messages).
pub(crate) fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Element, Diagnostic> {
        parse(s, Path::new("t.xml"))
    }

    #[test]
    fn builds_tree_with_lines_text_and_attrs() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a comment -->\n<Root A=\"1\">\n  <Child\n     B=\"x &amp; y\">  t &lt;1&gt; <![CDATA[<raw>]]> </Child>\n  <Empty/>\n</Root>\n";
        let root = p(doc).expect("parses");
        assert_eq!(root.name, "Root");
        assert_eq!(root.line, 3);
        assert_eq!(root.attr("A"), Some(("1", 3)));
        assert_eq!(root.children.len(), 2);
        let c = &root.children[0];
        assert_eq!(c.line, 4);
        assert_eq!(c.attr("B"), Some(("x & y", 5)));
        assert_eq!(c.text, "t <1> <raw>");
        assert_eq!(root.children[1].name, "Empty");
        assert_eq!(root.children[1].line, 6);
        assert_eq!(&*root.file, Path::new("t.xml"));
    }

    #[test]
    fn mismatched_end_tag() {
        let e = p("<A>\n<B>\n</C>\n</A>").expect_err("malformed");
        assert_eq!(e.line, 3);
        assert!(
            e.message.contains("</C>") && e.message.contains("<B>"),
            "{e}"
        );
        assert!(e.message.contains("line 2"), "{e}");
    }

    #[test]
    fn unclosed_element() {
        let e = p("<A>\n  <B>\n</A>").expect_err("malformed");
        assert_eq!(e.line, 3, "{e}");
        let e = p("<A>\n  <B></B>\n").expect_err("malformed");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("never closed"), "{e}");
    }

    #[test]
    fn bad_attribute() {
        let e = p("<A>\n<B x=1/>\n</A>").expect_err("malformed");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("attribute"), "{e}");
        let e = p("<A>\n<B\n x=\"1\"\n x=\"2\"/>\n</A>").expect_err("dup");
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn unclosed_tag_and_stray_text() {
        let e = p("<A>\n<B\n").expect_err("malformed");
        assert_eq!(e.line, 2, "{e}");
        let e = p("hello\n<A/>").expect_err("text");
        assert_eq!(e.line, 1);
        let e = p("<A/>\n<B/>").expect_err("two roots");
        assert_eq!(e.line, 2);
        let e = p("<!-- only -->").expect_err("empty");
        assert!(e.message.contains("no root"));
        let e = p("<A>&nbsp;</A>").expect_err("entity");
        assert!(e.message.contains("nbsp"));
    }
}
