"""UniPC for flow matching: the default solver of every Wan2.2 pipeline (`--sample_solver unipc`).

Matches `FlowUniPCMultistepScheduler` in `wan/utils/fm_solvers_unipc.py` of Wan-Video/Wan2.2@42bf4cf
(diffusers v0.31 UniPC adapted to flow sigmas) with the settings the pipelines use: solver_order=2,
predict_x0, bh2, lower_order_final, corrector on every step, final sigma zero, no thresholding;
`shared/wan22-spec.md` §6.1–6.2. Every coefficient is a 0-d fp32 tensor combined in upstream's
operation order, so a loop reproduces upstream's samples bit for bit in fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from wan_core.sampling.solver import FlowSolver


class UniPCSolver(FlowSolver):
    """UniPC-2 (bh2) predictor with the UniC corrector, in the x̂0 (data-prediction) form.

    Steps are counted from 0 after `set_timesteps`. Upstream instead looks `timesteps[0]` up in its
    list and takes the second match when the first two truncated timesteps coincide (shift 12 with
    >= 92 steps, shift 16 with >= 68, shift 8 with >= 144; spec §13.5), starting at index 1 there;
    only in that regime do the two differ.
    """

    name = "unipc"

    def __init__(self) -> None:
        super().__init__()
        self._last_sample: torch.Tensor | None = None  # previous predictor input (corrected)
        self._last_order = 0  # predictor order of the previous step = corrector order now

    def set_timesteps(
        self, num_steps: int, shift: float, device: torch.device | str | None = None
    ) -> None:
        super().set_timesteps(num_steps, shift, device)
        self._last_sample, self._last_order = None, 0

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the corrector's input: the previous sample and its order."""
        return {**super().state_dict(), "last_sample": self._last_sample, "last_order": self._last_order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._last_sample, self._last_order = state["last_sample"], int(state["last_order"])

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Correct the incoming sample with the new x̂0 (UniC), then predict the next (UniP)."""
        model_output, sample = model_output.float(), sample.float()
        x0_pred = self._begin_step(model_output, sample)  # from the uncorrected sample, as upstream
        i = self._step_index
        if self._last_sample is not None:
            sample = self._correct(x0_pred)
        self._push_x0(x0_pred)
        # lower_order_final and the warm-up: order 1 at the first and the last step, else 2.
        order = min(2, self.num_steps - i, i + 1)
        self._last_sample, self._last_order = sample, order
        prev_sample = self._predict(sample, order)
        self._step_index += 1
        return prev_sample

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP from σ_i to σ_{i+1}; at σ_{i+1} = 0 (order 1) this is x̂0_i exactly."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s0
        phi_1 = torch.expm1(-h)  # h·φ1 = e^{−h} − 1; bh2 uses the same value as B(h)
        m0 = self._x0_preds[-1]
        x_t = sigma_t / sigma_s0 * x - alpha_t * phi_1 * m0
        if order == 2:
            _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
            rk = (lambda_s1 - lambda_s0) / h
            d1 = (self._x0_preds[-2] - m0) / rk
            x_t = x_t - alpha_t * phi_1 * (0.5 * d1)  # order 2 uses the fixed ρ = 0.5, as upstream
        return x_t

    def _correct(self, x0_pred: torch.Tensor) -> torch.Tensor:
        """UniC: redo step i−1 → i from its input, now also using x̂0_i (order = p_{i−1})."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i - 1)
        h = lambda_t - lambda_s0
        hh = -h  # predict_x0
        phi_1 = torch.expm1(hh)
        b_h = phi_1  # bh2
        m0 = self._x0_preds[-1]
        x_t = sigma_t / sigma_s0 * self._last_sample - alpha_t * phi_1 * m0
        d1_t = x0_pred - m0
        if self._last_order == 1:
            return x_t - alpha_t * b_h * (0.5 * d1_t)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 2)
        rk = (lambda_s1 - lambda_s0) / h
        d1 = (self._x0_preds[-2] - m0) / rk
        # ρ solves [[1, 1], [r, 1]]·ρ = [b1, b2] (b_k from the φ_k recursion) in fp32 with
        # torch.linalg.solve, like upstream, so ρ carries the same last bits.
        phi_k = phi_1 / hh - 1
        b1 = phi_k * 1 / b_h
        phi_k = phi_k / hh - 1 / 2
        b2 = phi_k * 2 / b_h
        r = torch.tensor([[1.0, 1.0], [rk.item(), 1.0]])
        rho = torch.linalg.solve(r, torch.tensor([b1.item(), b2.item()]))
        return x_t - alpha_t * b_h * (rho[0] * d1 + rho[1] * d1_t)
