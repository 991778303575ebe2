"""A validation report as text a person reads: counts per class, image sizes, problems."""

from __future__ import annotations

from collections import Counter

from automl_vision.data.validate import SKIP, ValidationReport

MAX_SHOWN = 50


def format_report(report: ValidationReport, max_problems: int = MAX_SHOWN) -> str:
    s = report.stats
    files = " + ".join(report.files)
    lines = [f"{files}  ({report.task.value})"]
    detection = not report.task.is_classification
    head = f"  {report.lines:,} lines, {report.images:,} valid images"
    if detection:
        head += f", {report.objects_read:,} objects read, {report.objects:,} valid"
    lines.append(head + f", {len(s.get('classes', [])):,} classes")
    per_class = s.get("images_per_class", {})
    if per_class:
        width = max(12, max(len(c) for c in per_class) + 2)
        if detection:
            lines.append(f"  {'class':<{width}}{'images':>10}{'objects':>10}")
            for c, n in per_class.items():
                lines.append(f"  {c:<{width}}{n:>10,}{s['objects_per_class'].get(c, 0):>10,}")
        else:
            lines.append(f"  {'class':<{width}}{'images':>10}")
            for c, n in per_class.items():
                lines.append(f"  {c:<{width}}{n:>10,}")
    if detection and s.get("images"):
        per_image = s["objects_per_image"]
        lines.append(f"  objects per image: mean {per_image['mean']}, max {per_image['max']}; "
                     f"crowd {s['crowd_objects']:,}; images without objects {s['images_without_objects']:,}")
    size = s.get("image_size")
    if size:
        common = ", ".join(f"{k} ({v:,})" for k, v in size["most_common"].items())
        lines.append(f"  image sizes: width {size['width']['min']}-{size['width']['max']}, "
                     f"height {size['height']['min']}-{size['height']['max']}; most common {common}")
    if s.get("formats"):
        lines.append("  formats: " + ", ".join(f"{k} {v:,}" for k, v in s["formats"].items()))
    if s.get("splits") and set(s["splits"]) != {"unsplit"}:
        lines.append("  split: " + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()))
    if report.fetch is not None:
        f = report.fetch
        lines.append(f"  remote images: {f.fetched:,} fetched, {f.cached:,} from the cache, {f.failed:,} failed "
                     f"({f.bytes / 1e6:.1f} MB in {f.seconds:.1f} s, {f.retries} retries)")
    for w in report.warnings:
        lines.append(f"  warning: {w}")
    if report.problems:
        counts = Counter(p.code for p in report.problems)
        kinds = ", ".join(f"{k} {v:,}" for k, v in counts.most_common())
        lines.append(f"  {len(report.problems):,} problems ({kinds}):")
        for p in report.problems[:max_problems]:
            lines.append(f"    {p}")
        if len(report.problems) > max_problems:
            lines.append(f"    ... and {len(report.problems) - max_problems:,} more (--json lists them all)")
        if report.on_invalid == SKIP:
            lines.append(f"  skipped: {report.skipped_images:,} images and {report.skipped_objects:,} objects "
                         "(on_invalid skip)")
        else:
            lines.append("  the data is refused; fix the lines above, or pass --on-invalid skip to leave out "
                         "invalid images and objects")
    elif report.images:
        lines.append("  no problems")
    return "\n".join(lines)
