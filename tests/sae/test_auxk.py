"""AuxK without a host sync (a fixed aux_k, or a bound on the dead latents known on the host, over
scores masked to the dead latents, the scale on the device) against the plain definition over the min(aux_k, n_dead) largest dead latents: the value
and every gradient, for none, few, exactly aux_k and many dead latents."""
import pytest
import torch

from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig


def _plain_auxk(sae, x, x_hat, dead_H, aux_k):
    """Dense, readable AuxK with the number of dead latents read on the host."""
    n_dead = int(dead_H.sum())
    if n_dead == 0:
        return torch.zeros((), dtype=torch.float32)
    pre = torch.relu(x @ sae.W_enc + sae.b_enc)
    dead_idx = torch.nonzero(dead_H).squeeze(1)
    vals, pos = pre[:, dead_idx].topk(min(aux_k, n_dead), dim=-1)
    e_hat = (vals.unsqueeze(-1) * sae.W_dec[dead_idx[pos]]).sum(1)
    err = ((x - x_hat).detach() - e_hat).pow(2).sum(-1).mean()
    return err * min(n_dead / aux_k, 1.0)


@pytest.mark.parametrize("n_dead", [0, 3, 9, 40])
@pytest.mark.parametrize("slack", [None, 0, 4])
def test_fixed_aux_k_over_masked_scores_equals_the_plain_auxk(n_dead, slack):
    """slack: max_dead = n_dead + slack, a bound as the trainer knows it (None: no bound, aux_k latents)."""
    cfg = TopKSAEConfig(d_in=13, d_sae=57, k=5, aux_k=9, aux_coeff=0.5, dead_tokens=100)
    torch.manual_seed(n_dead)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(37, 13)
    since = torch.zeros(57, dtype=torch.int64)
    since[torch.randperm(57)[:n_dead]] = 100
    dead = since >= cfg.dead_tokens

    step = sae.training_loss(x, tokens_since_fired_H=since, max_dead=None if slack is None else n_dead + slack)
    (step.loss - step.mse).backward()  # the AuxK part only
    got_grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad()
    want = _plain_auxk(sae, x, step.x_hat_BD, dead, cfg.aux_k)
    torch.testing.assert_close(step.terms["auxk"], want.detach())
    if n_dead:
        (cfg.aux_coeff * want).backward()
    for name, param in sae.named_parameters():
        want_grad = torch.zeros_like(param) if param.grad is None else param.grad
        torch.testing.assert_close(got_grads.get(name, torch.zeros_like(param)), want_grad,
                                   rtol=1e-5, atol=1e-6, msg=name)
