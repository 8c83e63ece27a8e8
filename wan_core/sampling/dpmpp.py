"""DPM-Solver++ 2M for flow matching (`--sample_solver dpm++`).

Matches `FlowDPMSolverMultistepScheduler` in `wan/utils/fm_solvers.py` of Wan-Video/Wan2.2@42bf4cf
with the settings the pipelines use: solver_order=2, algorithm_type='dpmsolver++' (deterministic),
solver_type='midpoint', lower_order_final, final sigma zero, sigmas from `get_sampling_sigmas`
(scheduler shift 1); `shared/wan22-spec.md` §6.1, §6.3. Coefficients are 0-d fp32 tensors combined
in upstream's operation order; sample math in fp32.
"""

from __future__ import annotations

import torch

from wan_core.sampling.solver import FlowSolver


class DPMPPSolver(FlowSolver):
    """Multistep DPM-Solver++(2M), midpoint form, on x̂0 = x − σ·v.

    First order at step 0 (no history) and at the last step (σ → 0, final_sigmas_type='zero'),
    second order otherwise. The grid starts at σ = 1 where λ = −inf: step 0 then returns
    σ_1·x + α_1·x̂0 (e^{−h} = 0) and step 1's second-order term vanishes (1/r0 = 0), as upstream.
    Steps are counted from 0; DPM++'s truncated timesteps never repeat at the start.
    """

    name = "dpm++"

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One DPM++ step from σ_i to σ_{i+1}."""
        model_output, sample = model_output.float(), sample.float()
        x0_pred = self._begin_step(model_output, sample)
        self._push_x0(x0_pred)
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s0
        phi = alpha_t * (torch.exp(-h) - 1.0)  # α_t·(e^{−h} − 1)
        if i == 0 or i == self.num_steps - 1:
            prev_sample = (sigma_t / sigma_s0) * sample - phi * x0_pred
        else:
            _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
            r0 = (lambda_s0 - lambda_s1) / h
            m1, m0 = self._x0_preds
            d1 = (1.0 / r0) * (m0 - m1)
            prev_sample = (sigma_t / sigma_s0) * sample - phi * m0 - 0.5 * phi * d1
        self._step_index += 1
        return prev_sample
