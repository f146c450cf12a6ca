"""The shift benchmark's printed table, Markdown table, target check and PNG chart."""
import numpy as np

# The grounding targets: accuracy in distribution and under every shift, absent-object rejection.
TARGETS = {'in_distribution_accuracy': 0.97, 'in_distribution_mask_iou': 0.8,
           'shift_accuracy': 0.90, 'absent_rejected': 0.95, 'present_rejected_max': 0.03}
# (figure key, column title) of the rates the table and chart show.
RATES = (('seen_accuracy', 'seen acc'), ('held_out_accuracy', 'held-out acc'),
         ('absent_rejected', 'absent rejected'), ('present_rejected', 'present rejected'))
# What the robot acts on (perceive -> lift with the shape check), when the scenes had depth.
ROBOT = (('robot_accuracy', 'robot: right'), ('robot_absent_refused', 'robot: absent refused'),
         ('robot_present_refused', 'robot: present refused'))


def _rate(figure: dict) -> str:
    if not figure['n']:
        return 'n/a'
    return (f"{figure['rate']:.1%} [{figure['low']:.1%}, {figure['high']:.1%}] "
            f"({figure['k']}/{figure['n']})")


def _mean(figure: dict) -> str:
    if not figure['n']:
        return 'n/a'
    return f"{figure['mean']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def missed_targets(conditions: dict) -> list:
    """Return a sentence per missed grounding target ('' list when all are met)."""
    missed = []
    for name, figures in conditions.items():
        floor = (TARGETS['in_distribution_accuracy'] if name == 'in_distribution'
                 else TARGETS['shift_accuracy'])
        for key in ('seen_accuracy', 'held_out_accuracy', 'focus_accuracy'):
            rate = figures[key]['rate']
            if figures[key]['n'] and not rate >= floor:
                missed.append(f'{name}: {key} {rate:.1%} < {floor:.0%}')
        if name == 'in_distribution':
            iou = figures['mask_iou']['mean']
            if not iou >= TARGETS['in_distribution_mask_iou']:
                missed.append(f'{name}: mask IoU {iou:.3f} < '
                              f"{TARGETS['in_distribution_mask_iou']}")
        absent = figures['absent_rejected']['rate']
        if figures['absent_rejected']['n'] and not absent >= TARGETS['absent_rejected']:
            missed.append(f'{name}: absent rejected {absent:.1%} < '
                          f"{TARGETS['absent_rejected']:.0%}")
        wrong = figures['present_rejected']['rate']
        if figures['present_rejected']['n'] and wrong > TARGETS['present_rejected_max']:
            missed.append(f'{name}: present rejected {wrong:.1%} > '
                          f"{TARGETS['present_rejected_max']:.0%}")
    return missed


def format_conditions(conditions: dict) -> str:
    """Return one block per condition with every figure and its 95 % interval."""
    lines = []
    for name, f in conditions.items():
        lines.append(f"{name}: {f['scenes']} scenes, {f['present_queries']} present and "
                     f"{f['absent_queries']} absent distinct queries")
        for key, title in (('accuracy', 'accuracy'), *RATES[:2]):
            lines.append(f'  {title:<18} {_rate(f[key])}')
        if f['focus_accuracy']['n']:
            lines.append(f"  {'focus object acc':<18} {_rate(f['focus_accuracy'])}")
        lines.append(f"  {'mask IoU':<18} {_mean(f['mask_iou'])}")
        for key, title in RATES[2:]:
            lines.append(f'  {title:<18} {_rate(f[key])}')
        kinds = ', '.join(f"{kind} {v['rate']:.0%} of {v['n']}"
                          for kind, v in f['absent_rejected_by_kind'].items() if v['n'])
        lines.append(f"  {'absent by kind':<18} {kinds}")
        for key, title in ROBOT:
            if key in f:
                lines.append(f'  {title:<18} {_rate(f[key])}')
    return '\n'.join(lines)


def markdown_table(conditions: dict) -> str:
    """Return the table of doc/grounding.md: a row per condition, rates as 'x % (low–high)'."""
    def cell(figure, mean=False):
        if not figure['n']:
            return 'n/a'
        value = figure['mean'] if mean else figure['rate']
        if mean:
            return f"{value:.3f} ({figure['low']:.3f}–{figure['high']:.3f})"
        return f"{value:.1%} ({figure['low']:.0%}–{figure['high']:.0%})".replace('%', ' %')

    robot = [(key, title) for key, title in ROBOT
             if all(key in f for f in conditions.values()) and conditions]
    lines = ['| condition | queries (present / absent) | seen accuracy | held-out accuracy | '
             'focus object accuracy | mask IoU | absent rejected | present wrongly rejected |'
             + ''.join(f' {title} |' for _, title in robot),
             '|---|---|---|---|---|---|---|---|' + '---|' * len(robot)]
    for name, f in conditions.items():
        focus = f['focus_accuracy']
        lines.append(f"| {name} | {f['present_queries']} / {f['absent_queries']} | "
                     f"{cell(f['seen_accuracy'])} | {cell(f['held_out_accuracy'])} | "
                     f"{cell(focus) + ' of ' + str(focus['n']) if focus['n'] else '–'} | "
                     f"{cell(f['mask_iou'], mean=True)} | {cell(f['absent_rejected'])} | "
                     f"{cell(f['present_rejected'])} |"
                     + ''.join(f' {cell(f[key])} |' for key, _ in robot))
    return '\n'.join(lines)


def write_chart(conditions: dict, path, title: str) -> None:
    """Bar-chart the rates and mean mask IoU per condition with their 95 % intervals."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = (*RATES[:2], ('focus_accuracy', 'focus object acc'), ('mask_iou', 'mask IoU'),
            *RATES[2:])
    names = list(conditions)
    width = 0.8 / len(keys)
    figure, axis = plt.subplots(figsize=(max(8.0, 1.3 * len(names) + 2), 4.8))
    x = np.arange(len(names))
    for i, (key, label) in enumerate(keys):
        figs = [conditions[n][key] for n in names]
        # No bar where a condition has no such query (e.g. focus outside occlusion).
        value = np.array([f['mean' if key == 'mask_iou' else 'rate'] if f['n'] else np.nan
                          for f in figs], float)
        low = np.array([f['low'] for f in figs], float)
        high = np.array([f['high'] for f in figs], float)
        error = np.nan_to_num(np.stack([value - low, high - value]).clip(0.0))
        axis.bar(x + (i - (len(keys) - 1) / 2) * width, value, width, yerr=error, capsize=2,
                 label=label)
    axis.set_xticks(x, names, rotation=30, ha='right', fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.axhline(TARGETS['shift_accuracy'], color='grey', lw=0.8, ls='--')
    axis.set_title(f'{title}: test-split scenes per condition (bars: 95 % intervals)',
                   fontsize=10)
    axis.legend(loc='upper center', bbox_to_anchor=(0.5, -0.28), ncol=len(keys), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
