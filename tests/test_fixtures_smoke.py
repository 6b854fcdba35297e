from transformers import AutoModelForCausalLM, AutoTokenizer, BertForPreTraining


def test_tiny_models_load(tiny_gpt2, tiny_bloom, tiny_bert, minilm):
    for folder in (tiny_gpt2, tiny_bloom):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(folder))
    assert BertForPreTraining.from_pretrained(tiny_bert).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(minilm).mask_token == "[MASK]"
