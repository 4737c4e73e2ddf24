"""ComfyUI's V3 node schema (``comfy_api.latest``: ``io`` and ``ComfyExtension``) without ComfyUI.

Only the parts the pack uses, written to behave like ComfyUI 0.8's
``comfy_api/latest/_io.py``: the same constructor keywords, the same
``as_dict()`` / ``GET_NODE_INFO_V1()`` output (what ``GET /object_info``
sends) and the same execution entry (``EXECUTE_NORMALIZED`` on a clone of the
class). ``nodes/host.py`` picks the real module inside ComfyUI and this one
elsewhere; tests/test_v3_schema.py checks that both say the same for our nodes.
Nothing here is used inside ComfyUI.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


def _pruned(d: Dict[str, Any]) -> Dict[str, Any]:
    """ComfyUI's ``prune_dict``: options left at None are not sent."""
    return {k: v for k, v in d.items() if v is not None}


class classproperty:
    """A read-only property of the class (ComfyUI's ``comfy_api.internal.classproperty``)."""

    def __init__(self, f):
        self.f = f

    def __get__(self, obj, owner):
        return self.f(owner)


# --------------------------------------------------------------------------------------------- inputs and outputs
class Input:
    """A socket or widget input; ``Parent`` is the socket type it belongs to."""

    Parent: Any = None

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, extra_dict: dict = None, raw_link: bool = None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}
        self.rawLink = raw_link

    def as_dict(self) -> Dict[str, Any]:
        return _pruned({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                        "lazy": self.lazy, "rawLink": self.rawLink}) | _pruned(self.extra_dict)

    def get_io_type(self) -> str:
        return self.Parent.io_type

    def validate(self) -> None:
        pass


class WidgetInput(Input):
    """An input drawn as a widget; ``default`` is what a new node shows."""

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, socketless: bool = None, widget_type: str = None,
                 force_input: bool = None, extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless = default, socketless
        self.widget_type, self.force_input = widget_type, force_input

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self) -> str:
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def as_dict(self) -> Dict[str, Any]:
        return _pruned({"display_name": self.display_name or self.id, "tooltip": self.tooltip,
                        "is_output_list": self.is_output_list})

    def get_io_type(self) -> str:
        return self.io_type

    def validate(self) -> None:
        pass


def _socket_type(io_type: str, input_base=Input, name: Optional[str] = None):
    """A socket type class with its own ``Input`` / ``Output`` bound to it (ComfyUI's ``@comfytype``)."""
    kind = type(name or io_type.title(), (), {"io_type": io_type})
    kind.Input = type("Input", (input_base,), {"Parent": kind})
    kind.Output = type("Output", (Output,), {"Parent": kind})
    return kind


def Custom(io_type: str):
    """A socket type of our own (``DS360_MODEL`` ...): links carry any Python object."""
    return _socket_type(io_type)


Image = _socket_type("IMAGE", name="Image")
Mask = _socket_type("MASK", name="Mask")


class _IntInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool = None, socketless: bool = None, force_input: bool = None,
                 extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                            "control_after_generate": self.control_after_generate})


class _FloatInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: float = None, min: float = None, max: float = None, step: float = None,
                 round: float = None, socketless: bool = None, force_input: bool = None, extra_dict: dict = None,
                 raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.min, self.max, self.step, self.round = min, max, step, round

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step, "round": self.round})


class _StringInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, multiline: bool = False, placeholder: str = None, default: str = None,
                 dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None,
                 extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"multiline": self.multiline, "placeholder": self.placeholder,
                                            "dynamicPrompts": self.dynamic_prompts})


class _BooleanInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: bool = None, label_on: str = None, label_off: str = None,
                 socketless: bool = None, force_input: bool = None, extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.label_on, self.label_off = label_on, label_off

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"label_on": self.label_on, "label_off": self.label_off})


class _ComboInput(WidgetInput):
    def __init__(self, id: str, options: list = None, display_name: str = None, optional: bool = False,
                 tooltip: str = None, lazy: bool = None, default: Any = None, control_after_generate: bool = None,
                 socketless: bool = None, extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None, extra_dict,
                         raw_link)
        self.multiselect, self.options, self.control_after_generate = False, options, control_after_generate

    def as_dict(self) -> Dict[str, Any]:
        return super().as_dict() | _pruned({"multiselect": self.multiselect, "options": self.options,
                                            "control_after_generate": self.control_after_generate})


Int = _socket_type("INT", _IntInput, "Int")
Float = _socket_type("FLOAT", _FloatInput, "Float")
String = _socket_type("STRING", _StringInput, "String")
Boolean = _socket_type("BOOLEAN", _BooleanInput, "Boolean")
Combo = _socket_type("COMBO", _ComboInput, "Combo")


class _MultiTypeInput(Input):
    """An input that accepts several socket types (sent as ``"IMAGE,DS360_STYLE"``)."""

    def __init__(self, id: str, types: list, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, extra_dict: dict = None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self._io_types = list(types)

    def get_io_type(self) -> str:
        return ",".join(dict.fromkeys(t.io_type for t in self._io_types))


class MultiType:
    Input = _MultiTypeInput


# --------------------------------------------------------------------------------------------- schema
@dataclass
class Schema:
    """A node's declaration; the fields ComfyUI 0.8's ``io.Schema`` has."""

    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: List[Input] = field(default_factory=list)
    outputs: List[Output] = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        for kind, ids in (("Input", [i.id for i in self.inputs]), ("Output", [o.id for o in self.outputs])):
            repeated = sorted({x for x in ids if ids.count(x) > 1})
            if repeated:
                raise ValueError(f"{kind} ids must be unique, but {repeated} are not.")

    def finalize(self) -> None:
        for i, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"

    def input_dict_v1(self) -> Dict[str, Dict[str, tuple]]:
        """``INPUT_TYPES()``: required / optional sections, each in declaration order."""
        d: Dict[str, Dict[str, tuple]] = {"required": {}}
        for i in self.inputs:
            options = i.as_dict()
            options.pop("optional", None)
            d.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), options)
        return d

    def get_v1_info(self, cls) -> Dict[str, Any]:
        """What ``GET /object_info`` sends for the node (ComfyUI's ``NodeInfoV1`` as a dict)."""
        inputs = self.input_dict_v1()
        return {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.io_type for o in self.outputs],
            "output_is_list": [o.is_output_list for o in self.outputs],
            "output_name": [o.display_name or o.io_type for o in self.outputs],
            "output_tooltips": [o.tooltip or None for o in self.outputs],
            "output_matchtypes": None,
            "name": self.node_id,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": self.category,
            "output_node": self.is_output_node,
            "deprecated": self.is_deprecated,
            "experimental": self.is_experimental,
            "api_node": self.is_api_node,
        }



class NodeOutput:
    """What ``execute`` returns: the output values in schema order (plus optional ``ui``)."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "NodeOutput":
        return cls(*data.get("result", ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index):
        return self.args[index]


class HiddenHolder:
    """The hidden inputs of one execution by attribute (``cls.hidden.unique_id``); None when not given."""

    def __init__(self, values: Dict[str, Any]):
        self._values = dict(values)

    def __getattr__(self, key: str):
        return self._values.get(key.upper())


class ComfyNode:
    """Base of a V3 node: classmethods ``define_schema()`` and ``execute(**inputs)``; no instance state."""

    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None
    hidden = None  # filled per execution by the host (unique_id, prompt, ...)

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    def __init__(self):
        type(self).VALIDATE_CLASS()

    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        for name in ("define_schema", "execute"):
            if getattr(cls, name).__func__ is getattr(ComfyNode, name).__func__:
                raise Exception(f"No {name} function was defined for node class {cls.__name__}.")

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> Dict[str, Any]:
        return cls.GET_SCHEMA().get_v1_info(cls)

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Dict[str, tuple]]:
        return cls.FINALIZE_SCHEMA().input_dict_v1()

    @classproperty
    def FUNCTION(cls):  # noqa: N802  (ComfyUI's name)
        return "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute) else "EXECUTE_NORMALIZED"

    @classproperty
    def CATEGORY(cls):  # noqa: N802
        return cls.GET_SCHEMA().category

    @classproperty
    def DESCRIPTION(cls):  # noqa: N802
        return cls.GET_SCHEMA().description

    @classproperty
    def RETURN_TYPES(cls):  # noqa: N802
        return [o.io_type for o in cls.GET_SCHEMA().outputs]

    @classproperty
    def RETURN_NAMES(cls):  # noqa: N802
        return [o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs]

    @classproperty
    def OUTPUT_TOOLTIPS(cls):  # noqa: N802
        return [o.tooltip or None for o in cls.GET_SCHEMA().outputs]

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        if out is None:
            return NodeOutput()
        if isinstance(out, NodeOutput):
            return out
        if isinstance(out, tuple):
            return NodeOutput(*out)
        if isinstance(out, dict):
            return NodeOutput.from_dict(out)
        raise Exception(f"Invalid return type from node: {type(out)}")

    @classmethod
    def PREPARE_CLASS_CLONE(cls, v3_data: Optional[dict]) -> type:
        """A fresh subclass per execution (the host locks it), carrying the hidden inputs."""
        clone = type(f"{cls.__name__}Clone", (cls,) + cls.__bases__, dict(cls.__dict__))
        clone.hidden = HiddenHolder((v3_data or {}).get("hidden_inputs", {}))
        return clone


class ComfyExtension:
    """What ``comfy_entrypoint()`` returns: the pack's node classes."""

    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        raise NotImplementedError
