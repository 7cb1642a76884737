package configs

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is one configuration problem: where it is and what is wrong.
type Error struct {
	File string
	Line int    // 0 when unknown (a missing key, a semantic check)
	Key  string // dotted path, "listen.submission"; "" for the whole file
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Errors is every problem found in one configuration, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// decodeStrict decodes data over c. Unknown keys and type errors are all
// reported, each with its key path and line. It also returns the line of
// every key path present, so later semantic checks can point at lines too.
func decodeStrict(data []byte, file string, c *Config) (Errors, map[string]int) {
	lines := map[string]int{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if err == io.EOF {
			return nil, lines // an empty file means "all defaults"
		}
		return Errors{syntaxError(file, err)}, lines
	}
	if len(root.Content) == 0 {
		return nil, lines
	}
	doc := root.Content[0]
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return nil, lines // "---" alone, or only comments
	}
	if doc.Kind != yaml.MappingNode {
		return Errors{{File: file, Line: doc.Line, Msg: "the top level must be a mapping of keys (hostname: ..., listen: ...)"}}, lines
	}
	// A second document would be silently ignored by a plain decode; a
	// config that says two things must say which one it means.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Errors{{File: file, Line: max(extra.Line, 1), Msg: "only one YAML document is allowed (remove the second ---)"}}, lines
	} else if err != io.EOF {
		return Errors{syntaxError(file, err)}, lines
	}

	var errs Errors
	walk(doc, reflect.TypeOf(Config{}), "", file, lines, &errs)
	// yaml.v3 goes on past a field it cannot decode, leaving that field at
	// its default; the walk has already reported each such field by name,
	// so the bulk error is only used when the walk found nothing.
	if err := doc.Decode(c); err != nil && len(errs) == 0 {
		if te, ok := err.(*yaml.TypeError); ok {
			for _, m := range te.Errors {
				errs = append(errs, &Error{File: file, Line: yamlErrLine(m), Msg: friendlyTypeError(stripLine(m))})
			}
		} else {
			errs = append(errs, &Error{File: file, Msg: friendlyTypeError(stripLine(err.Error()))})
		}
	}
	return errs, lines
}

// syntaxError reports a YAML syntax error. yaml.v3 omits "line N" for
// errors on the first line.
func syntaxError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := max(yamlErrLine(msg), 1)
	return &Error{File: file, Line: line, Msg: "not valid YAML: " + stripLine(msg)}
}

// walk checks n against type t: every mapping key must be a yaml tag of t,
// and every leaf value must decode into its field's type. Each problem is
// reported with its own key path, so one run shows them all.
func walk(n *yaml.Node, t reflect.Type, path, file string, lines map[string]int, errs *Errors) {
	optional := false // a pointer to a struct: a section that is off when absent
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
		optional = t.Kind() == reflect.Struct
	}
	fail := func(line int, p, format string, args ...any) {
		*errs = append(*errs, &Error{File: file, Line: line, Key: p, Msg: fmt.Sprintf(format, args...)})
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	isLeaf := t.Kind() != reflect.Struct && t.Kind() != reflect.Slice && t.Kind() != reflect.Map ||
		reflect.PointerTo(t).Implements(reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem())
	switch {
	case isLeaf:
		// "hostname:" with nothing after it decodes as null, which yaml.v3
		// skips, silently keeping the default: say so instead.
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == "" {
			fail(n.Line, path, "has no value (write \"\" for an empty one, or remove the key to keep the default)")
			return
		}
		// yaml.v3 truncates 587.9 into an int field without a word.
		if n.Tag == "!!float" && (t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64) {
			fail(n.Line, path, "%s is not a whole number", n.Value)
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			fail(n.Line, path, "%s", friendlyTypeError(stripLine(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))))
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" && optional {
				// "acme:" alone would turn the section off, which is
				// surely not what writing it meant.
				fail(n.Line, path, "has no value (write {} to turn it on with its defaults, or remove the key)")
				return
			}
			if n.Tag == "!!null" {
				return // "key:" with nothing: keep the defaults
			}
			fail(n.Line, path, "expected a mapping of keys")
			return
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		pairs(n, fail, func(k string) string { return join(path, k) }, func(k, v *yaml.Node, p string) {
			ft, ok := fields[k.Value]
			if !ok {
				msg := "unknown key"
				if s := nearest(k.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %s?)", join(path, s))
				}
				fail(k.Line, p, "%s", msg)
				return
			}
			lines[p] = k.Line
			walk(v, ft, p, file, lines, errs)
		})
	case t.Kind() == reflect.Map:
		// A map by name (delivery.tls_policy: {example.org: {...}}):
		// each value is walked as strictly as a struct field, under the
		// key path `map["name"]`.
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return
			}
			fail(n.Line, path, "expected a mapping")
			return
		}
		pairs(n, fail, func(k string) string { return fmt.Sprintf("%s[%q]", path, k) }, func(k, v *yaml.Node, p string) {
			lines[p] = k.Line
			walk(v, t.Elem(), p, file, lines, errs)
		})
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Tag == "!!null" {
				return
			}
			fail(n.Line, path, "expected a list")
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			// An empty item ("- " or ~) would vanish and shift the
			// index of every later error.
			if item.Kind == yaml.ScalarNode && item.Tag == "!!null" && t.Elem().Kind() == reflect.Struct {
				fail(item.Line, p, "empty list item")
				continue
			}
			lines[p] = item.Line
			walk(item, t.Elem(), p, file, lines, errs)
		}
	}
}

// pairs calls each for every key and value of the mapping n, with the
// key's path as keyPath makes it; a key given twice is an error (YAML
// says the document is invalid, and which value wins would be a guess).
func pairs(n *yaml.Node, fail func(line int, p, format string, args ...any), keyPath func(string) string, each func(k, v *yaml.Node, p string)) {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := keyPath(k.Value)
		if first, dup := seen[k.Value]; dup {
			fail(k.Line, p, "already set at line %d", first)
			continue
		}
		seen[k.Value] = k.Line
		each(k, v, p)
	}
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// nearest returns the known key closest to k by edit distance, if close.
func nearest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for name := range fields {
		if d := editDistance(strings.ToLower(k), name); d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

func yamlErrLine(msg string) int {
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

func stripLine(msg string) string { return lineRE.ReplaceAllString(msg, "") }

// friendlyTypeError rewords yaml.v3's "cannot unmarshal !!str `x` into int".
func friendlyTypeError(msg string) string {
	r := strings.NewReplacer(
		"cannot unmarshal !!str", "cannot use the text",
		"cannot unmarshal !!map", "cannot use a mapping",
		"cannot unmarshal !!seq", "cannot use a list",
		"cannot unmarshal !!int", "cannot use the number",
		"cannot unmarshal !!float", "cannot use the number",
		"cannot unmarshal !!bool", "cannot use the boolean",
		"into int", "as a whole number",
		"into string", "as text",
		"into bool", "as true/false",
		"into []string", "as a list",
		"into configs.", "as ",
	)
	return r.Replace(msg)
}

func typeError(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
}

// UnmarshalYAML accepts Go duration syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "expected a duration such as 30s, 5m or 1h30m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return typeError(n, "%q is not a duration (use Go syntax such as 30s, 5m, 1h30m)", n.Value)
	}
	*d = Duration(v)
	return nil
}

// Size is a number of bytes, written as a plain number or with a binary
// unit: 512KiB, 25MiB, 1GiB.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// ParseSize parses "25MiB", "512KiB", "1GiB" or a plain byte count.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 || n > (1<<62)/u.mult {
			break
		}
		return Size(n * u.mult), nil
	}
	return 0, fmt.Errorf("%q is not a size (use a byte count or KiB, MiB, GiB, for example 25MiB)", s)
}

func (s Size) String() string {
	for _, u := range sizeUnits[:3] {
		if s >= Size(u.mult) && int64(s)%u.mult == 0 {
			return fmt.Sprintf("%d%s", int64(s)/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "expected a size such as 25MiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return typeError(n, "%s", err.Error())
	}
	*s = v
	return nil
}

// MarshalYAML writes sizes and durations back in their readable forms, so
// the effective configuration can be printed.
func (s Size) MarshalYAML() (any, error)     { return s.String(), nil }
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML accepts one name or a list of names.
func (l *NameList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value == "" {
			return typeError(n, "expected a name or a list of names")
		}
		*l = NameList{n.Value}
		return nil
	case yaml.SequenceNode:
		var out []string
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode || item.Value == "" {
				return typeError(item, "expected a name")
			}
			out = append(out, item.Value)
		}
		*l = out
		return nil
	}
	return typeError(n, "expected a name or a list of names")
}
