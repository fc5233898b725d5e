"""The gradio page of ``flashtorch serve``: the Explain, Compare models, Features and Runs tabs.

Only this module imports gradio. The page calls :class:`~flashtorch.app.core.Explainer`, which
calls the library's public API; every refusal becomes a message on the page (``gr.Error``),
never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import Cancelled, FlashTorchError, MissingDependencyError
from .core import (
    DEFAULT_LAYER,
    DEFAULT_METHODS,
    TOP_PREDICTION,
    Explainer,
    ExplainResult,
    class_choices,
    example_images,
)

_LOG = logging.getLogger("flashtorch.app")
#: Hosts that only this machine reaches.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _model_column(gr: Any, label: str, elem_id: str) -> tuple[Any, Any]:
    """One model's side of the Compare tab: its map gallery and its top classes."""
    with gr.Column():
        gallery = gr.Gallery(
            label=label,
            elem_id=elem_id,
            columns=1,
            height="auto",
            object_fit="contain",
            format="png",
        )
        return gallery, gr.Markdown()


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no call home
    try:
        import gradio as gr
    except ImportError:
        raise MissingDependencyError(
            'flashtorch serve needs gradio: pip install "flashtorch[app]"'
        ) from None
    return gr


def _page_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every exception of ``func`` into a message on the page (``gr.Error``)."""
    gr = _gradio()

    @functools.wraps(func)  # gradio reads the signature (a gr.Progress default)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except gr.Error:
            raise
        except (FlashTorchError, FileNotFoundError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # the server's log has the traceback, the page one line
            _LOG.exception("flashtorch serve: unexpected error")
            raise gr.Error(
                f"unexpected error ({type(exc).__name__}); see the server's log",
                print_exception=False,
            ) from None

    return wrapped


def _top5_choices(result: ExplainResult) -> list[tuple[str, str]]:
    return [(f"{label}: {prob * 100:.1f}%", label) for _index, label, prob in result.top5]


def _timings(result: ExplainResult) -> str:
    lines = ["| method | class | layer | seconds |", "|---|---|---|---|"]
    for item in result.maps:
        lines.append(
            f"| {item.method} | {item.target_label} | {item.layer or '-'} | {item.seconds:.3f} |"
        )
    return "\n".join(lines)


class StopTokens:
    """Per-session cancel tokens: **Stop** sets the events of that session's running calls.

    One per page (never shared between pages); keyed by gradio's session hash (one browser tab)
    and a group (one tab's button), so Stop stops only the calls of its own tab of its own
    visitor.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], list[threading.Event]] = {}

    def start(self, session: str, group: str) -> threading.Event:
        """A new token for a call that starts now."""
        event = threading.Event()
        with self._lock:
            self._running.setdefault((session, group), []).append(event)
        return event

    def finish(self, session: str, group: str, event: threading.Event) -> None:
        """Forget the token of a call that ended."""
        with self._lock:
            events = self._running.get((session, group), [])
            if event in events:
                events.remove(event)
            if not events:
                self._running.pop((session, group), None)

    def stop(self, session: str, group: str) -> int:
        """Set the tokens of the session's running calls of ``group``; how many there were."""
        with self._lock:
            events = list(self._running.get((session, group), []))
        for event in events:
            event.set()
        return len(events)


def _session(request: Any) -> str:
    return str(getattr(request, "session_hash", None) or "no-session")


def _stoppable(
    tokens: StopTokens, group: str, stopped: Callable[[str], Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a page function stoppable by its tab's **Stop** button, its steps on its bar.

    The wrapped function runs inside :func:`flashtorch.progress.report_to` with a per-call
    token (:class:`StopTokens`) as ``cancel``: the library's long methods report each step to
    the function's ``gr.Progress`` (its ``progress`` argument) and stop at the next step once
    Stop is clicked. The :class:`~flashtorch.errors.Cancelled` that ends the call becomes
    ``stopped(message)`` (default: a notice on the page and no output changed), never an error.
    gradio gives the wrapper the request (a ``request: gr.Request`` parameter is added).
    """
    gr = _gradio()
    from ..progress import report_to

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        params = list(sig.parameters.values())
        request = inspect.Parameter(
            "request",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=gr.Request,
        )
        # gradio inserts the request at its position: before a *args of option values
        varargs = [i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL]
        params.insert(varargs[0] if varargs else len(params), request)
        new_sig = sig.replace(parameters=params)

        def call_args(bound: inspect.BoundArguments) -> tuple[list[Any], dict[str, Any]]:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for p in sig.parameters.values():
                value = bound.arguments[p.name]
                if p.kind is inspect.Parameter.VAR_POSITIONAL:
                    args.extend(value)
                elif p.kind is inspect.Parameter.VAR_KEYWORD:
                    kwargs.update(value)
                elif p.kind is inspect.Parameter.KEYWORD_ONLY:
                    kwargs[p.name] = value
                else:
                    args.append(value)
            return args, kwargs

        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            bound = new_sig.bind(*args, **kwargs)
            bound.apply_defaults()
            session = _session(bound.arguments.get("request"))
            bar = bound.arguments.get("progress")
            f_args, f_kwargs = call_args(bound)

            def step(done: int, total: int, what: str) -> None:
                if callable(bar):
                    bar((done, total), desc=what, unit="steps")

            event = tokens.start(session, group)
            try:
                with report_to(step, cancel=event):
                    return func(*f_args, **f_kwargs)
            except Cancelled as exc:
                message = f"Stopped: {exc}."
                if stopped is not None:
                    return stopped(message)
                gr.Info(message)
                return gr.skip()
            finally:
                tokens.finish(session, group, event)

        wrapped.__signature__ = new_sig  # type: ignore[attr-defined]
        wrapped.__annotations__ = {"request": gr.Request}  # what gradio reads to pass it
        return wrapped

    return decorate


def _stop_button(gr: Any, button: Any, tokens: StopTokens, group: str) -> Any:
    """Wire ``button`` to stop the running calls of ``group`` of the visitor's session."""

    def stop(request: Any = None) -> None:
        if not tokens.stop(_session(request), group):
            gr.Info("Nothing is running.")

    stop.__annotations__ = {"request": gr.Request}
    # its own queue (concurrency id): a running call does not hold the Stop click back
    return button.click(stop, None, None, api_name=False, concurrency_limit=None)


def _feature_tab(gr: Any, explainer: Explainer, tokens: StopTokens) -> None:
    """The Feature visualisation tab: a layer's channels or a class, rendered, with Stop."""
    from .features import (
        DEFAULT_CHANNELS,
        DEFAULT_SIZE,
        DEFAULT_STEPS,
        MAX_SIZE,
        MAX_STEPS,
        MIN_SIZE,
        class_menu,
        conv_layers,
        default_conv_layer,
        render_features,
    )

    models = explainer.model_names
    channels_mode, class_mode = "channels of a layer", "a class"

    def layer_menu(model: str | None) -> tuple[list[tuple[str, str]], str | None]:
        layers = conv_layers(explainer, model)
        default = default_conv_layer(layers)
        menu = [(f"{n} ({c} channels){' (default)' * (n == default)}", n) for n, c in layers]
        return menu, default

    def stopped(message: str) -> tuple[Any, ...]:
        return f"**{message}**", gr.skip(), gr.skip()

    @_page_error
    def on_model(model: str) -> tuple[Any, Any]:
        menu, default = layer_menu(model)
        classes = class_menu(explainer.entry(model))
        return (
            gr.update(choices=menu, value=default),
            gr.update(choices=classes, value=classes[0] if classes else None),
        )

    @_page_error
    @_stoppable(tokens, "features", stopped)
    def feature_vis(
        model: str,
        mode: str,
        layer: str | None,
        channels: str,
        target: str | None,
        steps: float,
        size: float,
        progress: Any = gr.Progress(),  # noqa: B008 (gradio's way of asking for a bar)
    ) -> tuple[Any, ...]:
        progress(0.0, desc="render")
        result = render_features(
            explainer,
            model,
            layer,
            channels,
            target if mode == class_mode else None,
            steps=int(steps),
            size=int(size),
        )
        gallery = [(item.image, f"{item.label}: {item.objective:.3g}") for item in result.images]
        files = [str(item.png_path) for item in result.images if item.png_path]
        return f"Rendered {result.summary()}.", gallery, files

    first = models[0]
    menu, default = layer_menu(first)
    classes = class_menu(explainer.entry(first))
    with gr.Tab("Feature visualisation"):
        with gr.Row():
            with gr.Column(scale=1):
                f_model = gr.Dropdown(models, value=first, label="Model", elem_id="fv_model")
                f_mode = gr.Radio(
                    [channels_mode, class_mode],
                    value=channels_mode,
                    label="Render",
                    elem_id="fv_mode",
                )
                f_layer = gr.Dropdown(
                    menu,
                    value=default,
                    label="Layer (convolutions; type to search)",
                    filterable=True,
                    elem_id="fv_layer",
                )
                f_channels = gr.Textbox(
                    DEFAULT_CHANNELS,
                    label="Channels (0-3, 5 or 1,4,9)",
                    elem_id="fv_channels",
                )
                f_target = gr.Dropdown(
                    classes,
                    value=classes[0] if classes else None,
                    label="Class (type to search)",
                    filterable=True,
                    elem_id="fv_target",
                )
                f_steps = gr.Slider(
                    1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="fv_steps"
                )
                f_size = gr.Slider(
                    MIN_SIZE,
                    MAX_SIZE,
                    value=DEFAULT_SIZE,
                    step=16,
                    label="Size (px)",
                    elem_id="fv_size",
                )
                with gr.Row():
                    f_button = gr.Button("Render", variant="primary", elem_id="fv_render")
                    f_stop = gr.Button("Stop", variant="stop", elem_id="fv_stop")
            with gr.Column(scale=2):
                f_status = gr.Markdown(elem_id="fv_status")
                f_gallery = gr.Gallery(
                    label="Images (caption: the objective's final value)",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    format="png",
                    elem_id="fv_gallery",
                )
                f_files = gr.File(
                    label="Downloads (PNG)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="fv_downloads",
                )
        f_model.change(on_model, [f_model], [f_layer, f_target], api_name=False)
        f_button.click(
            feature_vis,
            [f_model, f_mode, f_layer, f_channels, f_target, f_steps, f_size],
            [f_status, f_gallery, f_files],
            api_name="feature_vis",
        )
        _stop_button(gr, f_stop, tokens, "features")


# --------------------------------------------------------------------------------------------
# The Explain tab's Options accordion, the models' notices and the methods each model offers
# --------------------------------------------------------------------------------------------


def _notices(gr: Any, explainer: Explainer) -> None:
    """The models' announcements (random weights...) under the title, one line each."""
    notices = explainer.notices()
    if notices:
        lines = [f"**Note:** {text}." for text in notices.values()]
        gr.Markdown("\n\n".join(lines), elem_id="notices")


def _options_accordion(gr: Any, explainer: Explainer, chosen: Any) -> tuple[list[Any], list[str]]:
    """The Explain tab's Options: each method's options, shown for the chosen methods only.

    The options are read off the registry (:func:`~flashtorch.app.core.option_specs`).

    Returns:
        The option boxes (inputs of Explain, after the others) and their keys
        (``"method.option"``, :meth:`~flashtorch.app.core.Explainer.parse_options`).
    """
    every = list(
        dict.fromkeys(m for name in explainer.model_names for m in explainer.model_methods(name))
    )
    initial = set(chosen.value or [])
    inputs: list[Any] = []
    keys: list[str] = []
    groups: list[Any] = []
    group_methods: list[str] = []
    with gr.Accordion("Options (of the chosen methods)", open=False, elem_id="options"):
        for method in every:
            specs = explainer.option_specs([method])
            if not specs:
                continue
            with gr.Group(visible=method in initial) as group:
                gr.Markdown(f"**{method}**")
                with gr.Row():
                    for spec in specs:
                        elem = f"opt_{method}_{spec.name}"
                        if spec.kind is bool:
                            box = gr.Checkbox(value=spec.default, label=spec.name, elem_id=elem)
                        elif spec.kind is int:
                            box = gr.Number(
                                value=spec.default, precision=0, label=spec.name, elem_id=elem
                            )
                        elif spec.kind is float:
                            box = gr.Number(value=spec.default, label=spec.name, elem_id=elem)
                        else:
                            box = gr.Textbox(value=spec.default, label=spec.name, elem_id=elem)
                        inputs.append(box)
                        keys.append(spec.key)
            groups.append(group)
            group_methods.append(method)

    def show(picked: list[str] | None) -> list[Any]:
        return [gr.update(visible=m in (picked or [])) for m in group_methods]

    if groups:
        chosen.change(show, [chosen], groups, api_name=False)
    return inputs, keys


def _model_methods_follow(gr: Any, explainer: Explainer, model: Any, chosen: Any) -> None:
    """A change of model offers that model's methods (rollout only for transformers)."""

    @_page_error
    def follow(name: str, picked: list[str] | None) -> Any:
        offered = explainer.model_methods(name)
        kept = [m for m in (picked or []) if m in offered]
        if not kept:
            kept = [m for m in DEFAULT_METHODS if m in offered]
        return gr.update(choices=offered, value=kept)

    model.change(follow, [model, chosen], [chosen], api_name=False)


# --------------------------------------------------------------------------------------------
# The Runs tab: browse the runs under the command line's --runs folders
# --------------------------------------------------------------------------------------------


def _runs_tab(gr: Any, explainer: Explainer) -> None:
    """The Runs tab: a run (among those under ``--runs``), sorted, filtered, a page at a time."""
    from .runs import STATUSES

    browser = explainer.runs
    runs = browser.choices()
    columns = ["score", "target_score", "agreement", "index"]
    first = runs[0] if runs else None
    for name in runs:  # the first run that reads is preselected, with its columns
        try:
            columns = browser.sort_columns(browser.open(name).manifest) or columns
        except FlashTorchError:
            continue
        first = name
        break
    orders = ["descending", "ascending"]

    @_page_error
    def show(
        name: str | None, sort: str | None, order: str, status: str, number: float | None
    ) -> tuple[Any, ...]:
        page = browser.page(name, sort or None, order != "ascending", int(number or 1), status)
        gallery = [(item.panel, item.caption) for item in page.items]
        value = sort if sort in page.columns else (page.columns[0] if page.columns else None)
        return (
            page.summary,
            gallery,
            page.position,
            gr.update(choices=page.columns, value=value),
            page.page,
        )

    def refresh() -> Any:
        found = browser.choices()
        return gr.update(choices=found)

    with gr.Tab("Runs"):
        with gr.Row():
            with gr.Column(scale=1):
                r_run = gr.Dropdown(
                    runs,
                    value=first,
                    label="Run (one of those under the --runs folders)",
                    allow_custom_value=True,
                    elem_id="r_run",
                )
                r_refresh = gr.Button("Refresh the list", size="sm", elem_id="r_refresh")
                r_sort = gr.Dropdown(
                    columns,
                    value=columns[0],
                    label="Sort by",
                    elem_id="r_sort",
                )
                r_order = gr.Radio(orders, value="descending", label="Order", elem_id="r_order")
                r_status = gr.Radio(list(STATUSES), value="ok", label="Images", elem_id="r_status")
                r_page = gr.Number(1, precision=0, minimum=1, label="Page", elem_id="r_page")
                with gr.Row():
                    r_prev = gr.Button("Previous", size="sm", elem_id="r_prev")
                    r_next = gr.Button("Next", size="sm", elem_id="r_next")
                r_button = gr.Button("Show", variant="primary", elem_id="r_show")
            with gr.Column(scale=3):
                r_summary = gr.Markdown(
                    "Pick a run and press **Show**."
                    if runs
                    else "No runs here: start the server with `flashtorch serve --runs DIR`.",
                    elem_id="r_summary",
                )
                r_gallery = gr.Gallery(
                    label="Images (image | one overlay per method)",
                    columns=3,
                    height="auto",
                    object_fit="contain",
                    format="png",
                    elem_id="r_gallery",
                )
                r_position = gr.Markdown(elem_id="r_position")
        inputs = [r_run, r_sort, r_order, r_status, r_page]
        outputs = [r_summary, r_gallery, r_position, r_sort, r_page]
        r_button.click(show, inputs, outputs, api_name="runs")
        for control in (r_run, r_sort, r_order, r_status):
            control.input(lambda: 1, None, [r_page], api_name=False).then(
                show, inputs, outputs, api_name=False
            )
        r_page.submit(show, inputs, outputs, api_name=False)
        r_refresh.click(refresh, None, [r_run], api_name=False)
        for button, step in ((r_prev, -1), (r_next, 1)):
            button.click(
                functools.partial(_step, step=step), [r_page], [r_page], api_name=False
            ).then(show, inputs, outputs, api_name=False)


def _step(number: float | None, step: int) -> int:
    return max(1, int(number or 1) + step)


def build_app(explainer: Explainer) -> Any:
    """The page (a ``gradio.Blocks``) for ``explainer``'s models.

    Args:
        explainer: the models of the command line and the upload limits.

    Returns:
        A ``gradio.Blocks``; :func:`launch` serves it.
    """
    gr = _gradio()
    models = explainer.model_names
    first = explainer.entry(None)
    methods = explainer.method_names()
    examples = list(example_images())
    limit = f"{explainer.max_upload_mb:g} MB, {explainer.max_pixels / 1e6:g} megapixels"
    tokens = StopTokens()  # Stop's per-session cancel tokens

    def pick_image(upload: str | None, example: str | None) -> str:
        if upload:
            return upload
        if example:
            return str(explainer.example(example))
        return ""  # check_upload says what to do

    @_page_error
    def on_model(model: str) -> tuple[Any, Any]:
        entry = explainer.entry(model)
        layers = explainer.layer_choices(model)
        return (
            gr.update(choices=class_choices(entry), value=TOP_PREDICTION),
            gr.update(choices=layers, value=DEFAULT_LAYER),
        )

    @_page_error
    @_stoppable(tokens, "explain")
    def explain(
        upload: str | None,
        example: str | None,
        model: str,
        chosen: list[str],
        target: str | None,
        layer: str | None,
        progress: Any = gr.Progress(),  # noqa: B008 (gradio's way of asking for a bar)
        *option_values: Any,  # the Options accordion's boxes, in the order of option_keys
    ) -> tuple[Any, ...]:
        def step(done: int, total: int, method: str) -> None:
            progress(done / total, desc=f"{method} ({done + 1}/{total})")

        options = explainer.parse_options(chosen or [], dict(zip(option_keys, option_values)))
        result = explainer.explain(
            pick_image(upload, example),
            model,
            chosen or [],
            target,
            layer,
            progress=step,
            options=options,
        )
        gallery = [(item.panel, result.caption(item)) for item in result.maps]
        files = [str(p) for item in result.maps for p in (item.png_path, item.npy_path) if p]
        return (
            result.image,
            gr.update(choices=_top5_choices(result), value=None),
            gallery,
            files,
            _timings(result),
        )

    @_page_error
    def compare(
        upload: str | None, example: str | None, method: str, model_a: str, model_b: str
    ) -> tuple[Any, ...]:
        image = pick_image(upload, example)
        out: list[Any] = []
        for model in (model_a, model_b):
            result = explainer.explain(image, model, [method], None, None, write_files=False)
            item = result.maps[0]
            top = ", ".join(f"{label} {prob * 100:.1f}%" for _i, label, prob in result.top5[:3])
            out.append([(item.panel, f"{model}: {result.caption(item)}")])
            out.append(f"**{model}**: {top}")
        return tuple(out)

    # gradio's copies of uploads and results: files older than an hour go, checked hourly
    with gr.Blocks(title="flashtorch", delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# flashtorch: what does the model see?\n"
            f"Uploads: images only, at most {limit}. Models: {', '.join(models)}."
        )
        _notices(gr, explainer)
        with gr.Tab("Explain"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Image", type="filepath", elem_id="upload")
                    example = gr.Dropdown(
                        examples,
                        value=None,
                        label="or a bundled example",
                        elem_id="example",
                    )
                    model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                    chosen = gr.CheckboxGroup(
                        explainer.model_methods(first.name),
                        value=[m for m in DEFAULT_METHODS if m in methods],
                        label="Methods",
                        elem_id="methods",
                    )
                    target = gr.Dropdown(
                        class_choices(first),
                        value=TOP_PREDICTION,
                        label="Target class (type to search)",
                        filterable=True,
                        elem_id="target",
                    )
                    layers = explainer.layer_choices(first.name)
                    layer = gr.Dropdown(
                        layers,
                        value=DEFAULT_LAYER,
                        label="CAM layer (the default marked)",
                        filterable=True,
                        elem_id="layer",
                    )
                    option_inputs, option_keys = _options_accordion(gr, explainer, chosen)
                    with gr.Row():
                        button = gr.Button("Explain", variant="primary", elem_id="explain")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Column(scale=2):
                    with gr.Row():
                        seen = gr.Image(
                            label="What the model sees", interactive=False, height=224, format="png"
                        )
                        top5 = gr.Radio(
                            [],
                            label="Top-5 predictions (click one to explain it)",
                            elem_id="top5",
                        )
                    maps = gr.Gallery(
                        label="Maps (overlay | raw map | colour bar)",
                        columns=2,
                        height="auto",
                        object_fit="contain",
                        format="png",
                        elem_id="maps",
                    )
                    timings = gr.Markdown(elem_id="timings")
                    files = gr.File(
                        label="Downloads (PNG overlays, raw .npy maps)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="downloads",
                    )
            inputs = [upload, example, model, chosen, target, layer, *option_inputs]
            outputs = [seen, top5, maps, files, timings]
            button.click(explain, inputs, outputs, api_name="explain")
            # one image at a time: an upload clears the example and the other way round
            upload.upload(lambda _f: None, [upload], [example], api_name=False)
            example.input(lambda _e: None, [example], [upload], api_name=False)
            model.change(on_model, [model], [target, layer], api_name=False)
            _model_methods_follow(gr, explainer, model, chosen)

            def choose(label: str | None) -> Any:
                return gr.update(value=label or TOP_PREDICTION)

            top5.input(choose, [top5], [target], api_name=False).then(
                explain, inputs, outputs, api_name=False
            )
            # Stop: the running method stops at its next step (flashtorch.progress)
            _stop_button(gr, stop, tokens, "explain")
        with gr.Tab("Compare models"):
            with gr.Row():
                with gr.Column(scale=1):
                    c_upload = gr.File(label="Image", type="filepath", elem_id="c_upload")
                    c_example = gr.Dropdown(examples, value=None, label="or a bundled example")
                    c_method = gr.Dropdown(methods, value="gradcam", label="Method")
                    c_a = gr.Dropdown(models, value=models[0], label="Model A")
                    c_b = gr.Dropdown(models, value=models[-1], label="Model B")
                    c_button = gr.Button("Compare", variant="primary", elem_id="compare")
                with gr.Column(scale=2), gr.Row():
                    (c_map_a, c_top_a), (c_map_b, c_top_b) = (
                        _model_column(gr, label, elem_id)
                        for label, elem_id in (("Model A", "c_map_a"), ("Model B", "c_map_b"))
                    )
            c_upload.upload(lambda _f: None, [c_upload], [c_example], api_name=False)
            c_example.input(lambda _e: None, [c_example], [c_upload], api_name=False)
            c_button.click(
                compare,
                [c_upload, c_example, c_method, c_a, c_b],
                [c_map_a, c_top_a, c_map_b, c_top_b],
                api_name="compare",
            )
        _feature_tab(gr, explainer, tokens)
        _runs_tab(gr, explainer)
    return app


def launch(
    explainer: Explainer,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    block: bool = True,
) -> Any:
    """Serve the page of :func:`build_app` (127.0.0.1 unless ``host`` says otherwise).

    Args:
        explainer: the models and limits.
        host: the interface to bind; anything but the loopback is announced with a warning.
        port: the TCP port.
        concurrency: how many explanations run at once (the rest wait in the queue).
        block: serve until interrupted (``False``: return at once, for tests).

    Returns:
        The ``gradio.Blocks``, running (call ``.close()`` to stop it).
    """
    if host not in LOCAL_HOSTS:
        warnings.warn(
            f"--host {host}: the page is reachable from other machines, and anyone who reaches "
            "it can run the models; keep the default 127.0.0.1 unless you mean it",
            UserWarning,
            stacklevel=2,
        )
    app = build_app(explainer)
    app.queue(default_concurrency_limit=int(concurrency), max_size=32)
    app.launch(
        server_name=host,
        server_port=int(port),
        max_file_size=explainer.max_upload_bytes,
        allowed_paths=[],
        show_error=False,
        ssr_mode=False,
        quiet=True,
        prevent_thread_lock=not block,
        footer_links=["api"],
    )
    return app


__all__ = ["LOCAL_HOSTS", "build_app", "launch"]
