"""peft configs of every method of the LoRA family on the Linears SNELLA adapts, small enough for the tiny encoders."""
from typing import Dict

# The Linears SNELLA adapts: attention's qkv and output projection, both MLP layers of every block.
TARGETS = r'.*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])'


def peft_configs(total_steps: int = 10) -> Dict[str, dict]:
    """LoRA, DoRA, AdaLoRA (its schedule over ``total_steps``), LoHa and LoKr at rank 4 as PEFTBackbone takes them."""
    tail = max(1, total_steps // 4)
    return {
        'lora': dict(type='LoraConfig', r=4, lora_alpha=8, target_modules=TARGETS),
        'dora': dict(type='LoraConfig', r=4, lora_alpha=8, use_dora=True, target_modules=TARGETS),
        'adalora': dict(type='AdaLoraConfig', init_r=6, target_r=4, total_step=total_steps, tinit=tail, tfinal=tail,
                        deltaT=1, target_modules=TARGETS),
        'loha': dict(type='LoHaConfig', r=4, alpha=8, target_modules=TARGETS),
        'lokr': dict(type='LoKrConfig', r=4, alpha=8, target_modules=TARGETS),
    }
