"""Source-level work before g++ sees a kernel: find the extern "C" kernels and their
parameters, rewrite `extern __shared__` arrays, and write the glue that lets ctypes call them.
"""
from __future__ import annotations

import dataclasses
import re

_COMMENT = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)
_EXTERN_C_BLOCK = re.compile(r'extern\s+"C"\s*\{')
_GLOBAL = re.compile(r'\b__global__\b')
_HEAD = re.compile(r'\s*(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
                   r'(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(')
_TYPEDEF = re.compile(r'\btypedef\s+([\w\s]+?)\s+([A-Za-z_]\w*)\s*;|\busing\s+([A-Za-z_]\w*)\s*=\s*([\w\s]+?)\s*;')
# `#define NAME type`: the registry names the element types this way (GPUCONV_STORAGE bf16_t).
_DEFINE = re.compile(r'^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([A-Za-z_][\w \t]*?)[ \t]*$', re.M)
_EXTERN_SHARED = re.compile(
    r'\bextern\s+__shared__\s+((?:__align__\s*\(\s*\d+\s*\)\s*)*)([A-Za-z_][\w\s]*?)\s*'
    r'((?:__align__\s*\(\s*\d+\s*\)\s*)*)\b([A-Za-z_]\w*)\s*\[\s*\]\s*;')
_STATIC_SHARED = re.compile(r'\bstatic\s+__shared__\b')
_TYPE_WORDS = {"const", "void", "bool", "char", "short", "int", "long", "unsigned", "signed",
               "float", "double"}
_QUALIFIERS = {"__restrict__", "__restrict", "restrict", "volatile"}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str      # the parameter's name in the source ('' when unnamed)
    declared: str  # its type as written, typedefs resolved: 'const float*'


@dataclasses.dataclass(frozen=True)
class KernelDecl:
    name: str
    params: tuple[Param, ...]
    extern_c: bool


def strip_comments(text: str) -> str:
    """Blanks comments and string literals, keeping every offset and newline in place."""
    def blank(m):
        s = m.group(0)
        if s == '"C"':  # extern "C" matters
            return s
        if s.startswith('"'):
            return '"' + " " * (len(s) - 2) + '"'
        return re.sub(r"[^\n]", " ", s)
    return _COMMENT.sub(blank, text)


def typedefs(clean: str) -> dict[str, str]:
    """Type aliases: typedefs, usings, and one-word-type #defines (for the parameters' names in messages)."""
    out = {m.group(1): " ".join(m.group(2).split()) for m in _DEFINE.finditer(clean)}
    for m in _TYPEDEF.finditer(clean):
        alias, target = (m.group(2), m.group(1)) if m.group(2) else (m.group(3), m.group(4))
        out[alias] = " ".join(target.split())
    return out


def _matching(text: str, open_at: int, pair: str = "()") -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == pair[0]:
            depth += 1
        elif text[i] == pair[1]:
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _parse_param(text: str, aliases: dict[str, str]) -> Param:
    words = re.findall(r"[A-Za-z_]\w*|\*|&|::|<|>|,|\d+", " ".join(text.split()))
    words = [w for w in words if w not in _QUALIFIERS]
    name = ""
    if len(words) >= 2 and re.fullmatch(r"[A-Za-z_]\w*", words[-1]) \
            and words[-1] not in _TYPE_WORDS and words[-1] not in aliases:
        name = words.pop()
    resolved = []
    for w in words:
        for _ in range(8):  # alias chains, e.g. storage_t -> GPUCONV_STORAGE -> bf16_t
            if w in aliases and w != aliases[w]:
                w = aliases[w]
            else:
                break
        resolved.append(w)
    declared = " ".join(resolved).replace(" *", "*").replace(" &", "&")
    return Param(name, declared)


def parse_kernels(source: str) -> dict[str, KernelDecl]:
    """Every `__global__ void name(...)` in the source, definitions and declarations alike."""
    clean = strip_comments(source)
    aliases = typedefs(clean)
    c_ranges = []
    for m in _EXTERN_C_BLOCK.finditer(clean):
        c_ranges.append((m.end(), _matching(clean, m.end() - 1, "{}")))
    kernels: dict[str, KernelDecl] = {}
    for g in _GLOBAL.finditer(clean):
        head = _HEAD.match(clean, g.end())
        if not head:
            continue
        name, lparen = head.group(1), head.end() - 1
        before = clean[max(0, g.start() - 200):g.start()]
        extern_c = bool(re.search(r'extern\s+"C"\s*(?:__launch_bounds__\s*\([^)]*\)\s*)?$', before)) \
            or any(a <= g.start() < b for a, b in c_ranges)
        inner = clean[lparen + 1:_matching(clean, lparen)]
        parts, depth, cur = [], 0, ""
        for ch in inner:
            depth += ch in "<(" and 1 or (ch in ">)" and -1 or 0)
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur.strip() and cur.strip() != "void":
            parts.append(cur)
        kernels[name] = KernelDecl(name, tuple(_parse_param(p, aliases) for p in parts), extern_c)
    return kernels


def rewrite(source: str) -> str:
    """`extern __shared__ T name[];` becomes a pointer into the simulator's dynamic shared
    buffer (a static array cannot be `extern`), and every other `__shared__` variable is
    registered with the simulator (see _register_shared); line numbers stay where they were."""
    def extern_shared(m):
        type_ = " ".join(m.group(2).split())
        newlines = m.group(0).count("\n")
        return (f"{type_}* const {m.group(4)} = reinterpret_cast<{type_}*>(gpuconv_sim::dyn_smem);"
                + "\n" * newlines)
    source = _STATIC_SHARED.sub("__shared__", source)
    return _register_shared(_EXTERN_SHARED.sub(extern_shared, source))


def _declared_names(declaration: str) -> list[str]:
    """The variables a declaration (the text between `__shared__` and its `;`) declares:
    per top-level declarator, the last identifier before its first `[` or `=`."""
    names, depth, start = [], 0, 0
    parts = []
    for i, ch in enumerate(declaration):
        depth += ch in "([{" and 1 or (ch in ")]}" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(declaration[start:i])
            start = i + 1
    parts.append(declaration[start:])
    for part in parts:
        head = re.split(r"[\[=]", part, maxsplit=1)[0]
        head = re.sub(r"__align__\s*\([^)]*\)|__attribute__\s*\(\(.*?\)\)", " ", head)
        ids = re.findall(r"[A-Za-z_]\w*", head)
        if ids:
            names.append(ids[-1])
    return names


def _register_shared(source: str) -> str:
    """Appends to each `__shared__` declaration a registration with the simulator:
    `static const bool NAME__gpuconv_shared = gpuconv_sim::shared_var(&NAME, sizeof(NAME));`.
    `__shared__` puts a variable in the poisoned "gpuconv_shared" section, but g++ ignores the
    section attribute of a static local in a template (it goes to a COMDAT .bss section), so a
    templated kernel's shared tiles would be neither poisoned nor known as shared memory; the
    registration (once per variable, when its declaration first runs) adds them to both. A
    variable already in the section needs none, and shared_var returns at once for it."""
    clean = strip_comments(source)
    inserts = []
    for m in re.finditer(r"\b__shared__\b", clean):
        depth, end = 0, None
        for i in range(m.end(), len(clean)):
            ch = clean[i]
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == ";" and depth == 0:
                end = i
                break
        if end is None:
            continue
        regs = "".join(f" static const bool {n}__gpuconv_shared __attribute__((unused)) = "
                       f"gpuconv_sim::shared_var(&{n}, sizeof({n}));" for n in _declared_names(clean[m.end():end]))
        inserts.append((end + 1, regs))
    for at, text in reversed(inserts):
        source = source[:at] + text + source[at:]
    return source


def glue(kernels: dict[str, KernelDecl]) -> str:
    """An entry point per extern "C" kernel that unpacks ctypes' argument array, and one that
    reports the parameter types as the compiler resolved them."""
    lines = ['\n#line 1 "<gpuconv hostsim glue>"']
    vis = '__attribute__((visibility("default")))'
    for k in kernels.values():
        if not k.extern_c:
            continue
        lines.append(f'extern "C" {vis} void gpuconv_sim_entry__{k.name}(void** a) '
                     f'{{ gpuconv_sim::invoke(&{k.name}, a); }}')
        lines.append(f'extern "C" {vis} const char* gpuconv_sim_sig__{k.name}() '
                     f'{{ return gpuconv_sim::signature(&{k.name}); }}')
    return "\n".join(lines) + "\n"
